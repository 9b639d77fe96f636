"""`python -m imagen_bench ...` (and `torchrun ... -m imagen_bench train ...`): the same as `imagen-bench ...`."""

import sys

from imagen_bench import main

sys.exit(main())
