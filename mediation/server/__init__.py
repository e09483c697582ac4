"""The trio service: warrant table, ingest, delivery to agencies, retrieval, control socket.

Public surface::

    MediationServer(data_dir, key, config=...).run()  the whole service (``app.py``)
      .ingest(handle, "cmII"|"cmCC", der, captured)   store a PDU -> Appended | None
      .notice(handle, event, **fields)                a completeness notice -> sequence
      .tap_lost / .tap_restored / .upstream_gap       what tap links report
      .delivery_rows()                                per warrant stream and endpoint
    ServerConfig                                      the configuration (``config.py``)
    load_config                                       reading its TOML file (``config_file.py``)
    WarrantTable, TableChange                         warrants and states (``warrant_table.py``)
    request / socket_path                             the control socket's client (``control.py``)
    ControlSocket / serve_control                     its server side (``control_listener.py``)
    ServerLock                                        one server per data directory (``lock.py``)

Inside: ``ingest`` and ``notices`` (into the log), ``delivery`` with
``delivery_udp`` and ``delivery_tls`` (one worker per agency endpoint),
``link`` (a TLS connection driving the stream machine), ``retrieval``,
``tls`` (identity and contexts), ``status``. Import the submodules
directly; this package imports nothing heavy itself.
"""
