"""The learning toolbox: everything that turns recorded or verified outcomes into routing decisions.

The trained complexity router and the cascade judges (rule, learned, LLM), their text features,
thresholds, the linear model and its file format; `training/` fits them offline; `online/` keeps
them calibrated on live, verified traffic. The request path (routing/) only calls into this
package; nothing here imports the server. Heavy imports (NumPy, onnxruntime) stay inside the
modules that need them, so importing the package costs nothing.
"""
