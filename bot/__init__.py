"""deskbot core: conversation manager, tickets, outbox, scheduling and the CLI."""
