import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

# diffusers and transformers give their library logger a stderr handler when it is first used, bound to the
# sys.stderr of that moment. Bind it now, to the session's stream: bound inside a test that captures stderr, it
# would write into that test's closed stream ever after ("--- Logging error ---" in whichever test logs next).
import diffusers.utils.logging  # noqa: E402
import transformers.utils.logging  # noqa: E402

diffusers.utils.logging.get_logger("diffusers")
transformers.utils.logging.get_logger("transformers")
