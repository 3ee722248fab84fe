"""PEFT adapter directories and safetensors in/out, with validation.

No repository knowledge lives here.
"""
