"""What every Neural platform service shares: settings, logging, the gRPC server bootstrap
(health, reflection, metrics, interceptors, graceful stop), the database, authentication,
job records and the Dramatiq broker. One way to do each of these, used by every service."""
