from mediation.cli.main import main

raise SystemExit(main())
