"""The no-GPU verification harness: ahead-of-time compilation of every registered kernel for
real GPU targets, and the resource facts read from what the compilers produce."""
