"""The DICOM network layer, written for the gateway (PS3.8 upper layer, the DIMSE it needs).

- ``pdu``: PDU constants, codec and the errors that end an association;
- ``dimse``: command sets (C-STORE, C-ECHO and their responses);
- ``reader``: the bounded PDU reader both sides use;
- ``acceptor``: inbound associations (the receiving node's server);
- ``requestor``: outbound associations (the forwarders' C-STORE and C-ECHO);
- ``tls``: TLS contexts for both.
"""
