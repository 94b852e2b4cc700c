"""Training for VIVA editors: SFT (mask-weighted flow matching), Edit-GRPO (Flow-SDE policy gradient) and RWO.

`losses` holds the formulas, `rewards` the pluggable reward terms; the trainer wires them to data and models."""
