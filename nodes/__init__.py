"""ComfyUI adapters for viva_core. Node ids and input names are frozen once released."""

from .edit import BestOfN, EditVideo, EncodeInstruction, JudgeEdit, LoadVideo
from .loaders import LoadEditor, LoadVLM, LoraLoader, StepCache
from .train import DatasetFromFolder, TrainLoRA

NODES = [
    LoadEditor,
    LoadVLM,
    LoraLoader,
    StepCache,
    LoadVideo,
    EncodeInstruction,
    EditVideo,
    BestOfN,
    JudgeEdit,
    DatasetFromFolder,
    TrainLoRA,
]
