"""The trio service: the warrant table, the control socket, and (later) ingest and delivery.

Public surface::

    MediationServer(data_dir, key).run()      the whole service (``app.py``)
    WarrantTable, TableChange                 warrants and their states (``warrant_table.py``)
    serve_control / request / socket_path     the control socket (``control.py``)

Import the submodules directly; this package imports nothing heavy itself.
"""
