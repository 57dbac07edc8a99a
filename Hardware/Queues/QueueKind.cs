namespace ActorBlk.Hardware.Queues;

/// <summary>What a request queue is (blk-mq-semantics §10): decided once, at initialisation.</summary>
public enum QueueKind
{
    /// <summary>Allocated and not initialised: the placeholder device-mapper creates before its first table load.</summary>
    Placeholder,

    /// <summary>Bios go straight to a bio driver (<c>submit_bio</c>), as for device-mapper's bio-based targets.</summary>
    BioBased,

    /// <summary>Software contexts, hardware queues and tags (blk-mq).</summary>
    MultiQueue,
}

/// <summary>A request queue's life: allocate -> initialise -> register -> unregister (dying) -> dead.</summary>
public enum QueueState
{
    /// <summary>Phase 1 done: a placeholder.</summary>
    Allocated,

    /// <summary>Bio-based or multi-queue, not registered: cheap, with nothing started per CPU or per hardware queue.</summary>
    Initialized,

    /// <summary>Registered: the usage counter is per CPU, the attribute tree is published, dispatch runs.</summary>
    Registered,

    /// <summary>Unregistering: new entries fail with Offline while the queue drains.</summary>
    Dying,

    /// <summary>Gone: everything registration created is released.</summary>
    Dead,
}
