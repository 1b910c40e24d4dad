"""Studies: methods × datasets × seeds (× tuning trials, or a sweep) as one resumable job set.

A study is declared once (`declare.py`: a TOML file and/or CLI flags), expanded into jobs
(`jobs.py`: one bbench run per job, in a directory named by the hash of its resolved spec,
so a re-run finds what is finished and launches only the rest), tuned on validation only
(`tune.py`), and executed through a small launcher interface (`launch.py`: in-process or a
local process pool; a cluster launcher can implement the same two methods). `run.py` ties
these together and shows one progress display across all jobs. docs/studies.md describes
the directory layout that reports read.
"""
