"""Everything around the library, apart from it: the ``gpukernels`` command (cli), benchmarks
runner (bench), static report (report), the compile gate (verify) and the GPU proof
(gpu_proof). The library (``gpukernels`` and its op packages) never imports this package."""
