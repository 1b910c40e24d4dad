from bbench.cli import main

raise SystemExit(main())
