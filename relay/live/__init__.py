"""The websocket server process: fans the live stream out to browsers, with resume."""
