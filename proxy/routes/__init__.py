"""HTTP handlers, one module per endpoint family; `proxy.app` wires them."""
