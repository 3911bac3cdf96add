"""`faregate cache-eval`: the semantic cache measured on distinct questions and labelled pairs."""
