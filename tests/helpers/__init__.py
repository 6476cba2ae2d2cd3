"""Helpers of the tests (no tests here): dataset writers, a tiny trained run and the commands run as
subprocesses, and the script the parallel tests run in several processes."""
