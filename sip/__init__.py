"""Everything pjsua2: worker processes, their protocol, the pool, answering-machine detection."""
