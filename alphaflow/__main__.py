from alphaflow.cli.main import main

raise SystemExit(main())
