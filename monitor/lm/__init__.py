"""The monitored language model: loading it (``loading``), chat rendering with token roles (``chat``), the
activation tap (``tap``), offline batched runs through the tap (``runner``) and the remote tap that ships
batches to a sidecar over HTTP (``http_sink``)."""
