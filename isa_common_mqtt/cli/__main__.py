"""``python -m isa_common_mqtt.cli``."""

import sys

from . import main

sys.exit(main())
