"""The datasets training and inference read: region stores for distillation, bags for MIL, labels."""
