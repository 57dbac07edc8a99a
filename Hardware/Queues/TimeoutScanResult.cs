namespace ActorBlk.Hardware.Queues;

/// <summary>Result of a timeout scan of one hardware queue.</summary>
/// <param name="Expired">Requests whose deadline had passed and whose driver handler was called.</param>
/// <param name="InFlight">Requests of this hardware queue that were in flight.</param>
public readonly record struct TimeoutScanResult(int Expired, int InFlight);
