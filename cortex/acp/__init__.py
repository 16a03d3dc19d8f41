"""`cortex acp`: a coding agent for Zed and other Agent Client Protocol editors, running its
loop on the fleet's models through the gateway. Needs the `acp` extra
(`agent-client-protocol`); nothing else in cortex imports this package."""
