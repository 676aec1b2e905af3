"""lm-evaluation-harness task configs reading the offline general-capability files.

Usable from lm-eval's own CLI too::

    lm_eval --model hf --model_args pretrained=HuggingFaceTB/SmolLM2-135M-Instruct \\
        --include_path benchmarks/lm_eval_tasks --tasks offline_boolq,offline_gsm8k \\
        --metadata '{"data_dir": "../shared/data"}'
"""
