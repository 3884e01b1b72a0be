from maas_workloads.serve.server import main

raise SystemExit(main())
