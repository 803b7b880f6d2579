"""Instrumentation of training: the gradient probes of the flow-matching and consistency terms."""
