"""The CDS Hooks service: HTTP app, request checks, configuration, client authentication,
prefetch and FHIR server access, cards, feedback store, knowledge-base reload and the process
model (``movement-cds serve``).

The top layer: it uses the public API of ``movement_cds`` (and of ``fhir_adapters``, ``cds``
and ``knowledge_base``) and nothing imports it; its commands reach the ``movement-cds``
command line through the ``movement_cds.cli`` entry-point group. Its modules other than
``_cli`` need the ``service`` extra (``pip install 'movement-cds[service]'``); importing this
package does not.
"""

__all__: list[str] = []
