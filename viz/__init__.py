"""Diagrams of the Perceiver encoder's layers and mask dataflow (graph model, then Graphviz rendering)."""
