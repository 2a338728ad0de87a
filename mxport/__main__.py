from mxport.cli import main

raise SystemExit(main())
