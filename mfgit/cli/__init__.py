"""Click commands: parse, call one API function, render."""
