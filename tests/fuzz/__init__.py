"""Fuzzing of the artifact reader and the ONNX loader: mutators shared by the hypothesis tests
(`make test`, a fixed budget) and the subprocess campaign (`make fuzz`, python -m tests.fuzz.campaign)."""
