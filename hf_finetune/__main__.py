import sys

from hf_finetune.cli.main import main

sys.exit(main())
