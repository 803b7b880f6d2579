from alphaflow.cli import main

raise SystemExit(main())
