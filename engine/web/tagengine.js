/* tagengine browser forwarder: placeholder until the forwarder lands. */
