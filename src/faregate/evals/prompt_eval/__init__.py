"""`faregate eval`: run a prompt set across models through the gateway, score and compare the answers."""
