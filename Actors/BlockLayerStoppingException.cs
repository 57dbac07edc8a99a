namespace ActorBlk.Actors;

/// <summary>
/// A device was to be created, allocated, registered or given a table while its node shuts down
/// (coordinated shutdown has begun, <see cref="BlockLayer.Stopping"/>): nothing was changed. A
/// device made then would come after the shutdown had listed the devices it tears down, and would
/// outlive it. It is an <see cref="OperationCanceledException"/> for the node's stop, so start-up
/// code that treats a cancellation by <see cref="BlockLayer.Stopping"/> as a stop needs nothing more.
/// As for any cancellation, the task of an async call that throws it ends
/// <see cref="TaskStatus.Canceled"/>: <c>await</c> rethrows this exception, while
/// <see cref="Task.Exception"/> stays null (read it with <c>GetAwaiter().GetResult()</c>).
/// </summary>
public sealed class BlockLayerStoppingException : OperationCanceledException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="device">The device the refused request named.</param>
    /// <param name="stopping">The block layer's <see cref="BlockLayer.Stopping"/> token.</param>
    public BlockLayerStoppingException(string device, CancellationToken stopping)
        : base($"{device}: the node is shutting down; no device is created, registered or given a table while it stops.", stopping)
    {
        Device = device;
    }

    /// <summary>The device the refused request named.</summary>
    public string Device { get; }
}
