"""`python -m bbench.benchmarking`: the GPU validation script (see `bbench.benchmarking.gpu`)."""
from bbench.benchmarking.gpu import main

raise SystemExit(main())
