"""`hyperbench score`: lm-eval tasks through the common adapter, the same code for every engine.

- `lm.EngineLM`: the lm-eval `LM` that talks to any engine over the OpenAI completions contract
  (loglikelihood by echoed prompt logprobs, rolling loglikelihood, generate_until).
- `data`: offline data folders in the schemas lm-eval's stock tasks read (manifest + checks);
  `staging`: fill one from the hub (`data pull`) or from registry packages (`data stage`).
- `tasks`: stock task definitions pointed at a data folder by generated `include:` YAMLs.
- `run.run(config)`: bring the engine up, evaluate, write the run folder.

lm-eval and transformers are imported lazily: the CLI imports this package on machines where
the `eval` extra is not installed, and says which extra is missing only when it is needed.
"""
