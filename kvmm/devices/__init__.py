"""Legacy devices and the buses they sit on."""
