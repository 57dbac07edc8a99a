using Serilog.Events;

namespace ActorBlk.Samples.MirrorJournal;

/// <summary>What a run of the sample does (its command line; <c>--help</c> describes each).</summary>
public sealed record JournalOptions
{
    /// <summary>The name of the local leg's device on this node.</summary>
    public const string LocalLeg = "journal-leg0";

    /// <summary>The name of the second node's leg device (in the configuration this sample writes for it).</summary>
    public const string RemoteLeg = "journal-leg1";

    /// <summary>The name of the mirror device.</summary>
    public const string Mirror = "journal";

    /// <summary>The cluster's node configuration (hocon.conf), or null to look for it.</summary>
    public string? Config { get; init; }

    /// <summary>This node's remoting port (0: any free one).</summary>
    public int Port { get; init; }

    /// <summary>Directory of the local leg's file, the second node's configuration and (chaos) its file and log.</summary>
    public required string Dir { get; init; }

    /// <summary>The second leg's cluster name, or null for <see cref="RemoteLeg"/> (chaos: on the child node).</summary>
    public string? Leg { get; init; }

    /// <summary>Bytes of each leg's file.</summary>
    public long LegBytes { get; init; }

    /// <summary>Bytes of journal per write-intent bitmap bit.</summary>
    public long RegionBytes { get; init; }

    /// <summary>Records to append (0: until Ctrl-C or the journal is full).</summary>
    public long Records { get; init; }

    /// <summary>Records per second (0: as fast as it can).</summary>
    public double Rate { get; init; }

    /// <summary>Appends in flight.</summary>
    public int Depth { get; init; }

    /// <summary>Start, kill -9 and restart the second node as a child process.</summary>
    public bool Chaos { get; init; }

    /// <summary>actorblk.dll, or null to look for it.</summary>
    public string? ActorBlk { get; init; }

    /// <summary>Chaos: records before the kill.</summary>
    public long KillAt { get; init; }

    /// <summary>Chaos: records while degraded before the restart.</summary>
    public long DegradedRecords { get; init; }

    /// <summary>Chaos: records after the resync.</summary>
    public long AfterRecords { get; init; }

    /// <summary>Longest wait for one step (the second node, a state change, the final resync).</summary>
    public TimeSpan Patience { get; init; }

    /// <summary>Time between progress lines.</summary>
    public TimeSpan Interval { get; init; }

    /// <summary>Lowest level of the node's own log (on stderr).</summary>
    public LogEventLevel LogLevel { get; init; } = LogEventLevel.Error;

    /// <summary>What is wrong with the options, or null.</summary>
    public string? Problem() =>
        Port is < 0 or > 65535 ? $"--port {Port} is not from 0 to 65535."
        : LegBytes < 1 << 20 ? "--leg-mib must be at least 1."
        : RegionBytes < 64 << 10 || (RegionBytes & (RegionBytes - 1)) != 0 ? "--region-kib must be a power of two of at least 64."
        : Records < 0 ? "--records must not be negative."
        : Rate < 0 ? "--rate must not be negative."
        : Depth is < 1 or > 64 ? "--depth must be from 1 to 64."
        : KillAt < 1 || DegradedRecords < 1 || AfterRecords < 1 ? "--kill-at, --degraded-records and --after-records must be at least 1."
        : Patience <= TimeSpan.Zero || Interval <= TimeSpan.Zero ? "--patience and --interval must be positive."
        : Chaos && Leg is not null ? "--chaos starts the second node itself; leave out --leg."
        : null;
}
