"""What an operator sees of the gateway: the record of each call (:mod:`.calls`), Prometheus metrics
(:mod:`.metrics`) and the log set-up (:mod:`.logs`)."""
