"""ComfyUI adapters for viva_core. Node ids and input names are frozen once released."""

from .edit import BestOfN, EditVideo, EncodeInstruction, JudgeEdit, LoadVideo
from .loaders import LoadEditor, LoadVLM, LoraLoader
from .train import DatasetFromFolder, TrainLoRA

NODES = [
    LoadEditor,
    LoadVLM,
    LoraLoader,
    LoadVideo,
    EncodeInstruction,
    EditVideo,
    BestOfN,
    JudgeEdit,
    DatasetFromFolder,
    TrainLoRA,
]
