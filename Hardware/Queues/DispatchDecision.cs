using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

/// <summary>What a hardware queue's dispatcher should do after a dispatch round.</summary>
public enum DispatchDecision
{
    /// <summary>Nothing is waiting: sleep until kicked.</summary>
    Idle,

    /// <summary>Run another round now.</summary>
    RerunNow,

    /// <summary>Requests were put back after <see cref="BlockStatus.Resource"/>: rerun after <see cref="HardwareContext.ResourceDelay"/>.</summary>
    RerunAfterDelay,

    /// <summary>Requests were put back after <see cref="BlockStatus.DeviceResource"/>: the next completion reruns the queue.</summary>
    WaitForCompletion,

    /// <summary>The driver reported a device error; dispatch stops until the device is reset.</summary>
    Faulted,
}
