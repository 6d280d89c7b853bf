"""The real-software lab: real servers and clients on loopback, and captures of them."""
