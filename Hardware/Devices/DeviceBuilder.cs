using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Devices;

/// <summary>
/// Builds the data plane of a device from <see cref="DeviceOptions"/>: the driver, the tag set and
/// the request queue. The control plane (BlockLayer) uses it to create devices; tests and
/// benchmarks use <see cref="CreateRingDevice"/> for a ring-dispatch device without actors.
/// </summary>
public static class DeviceBuilder
{
    /// <summary>How long a standalone device waits for in-flight I/O at disposal before failing it.</summary>
    public static readonly TimeSpan DefaultDrainTimeout = TimeSpan.FromSeconds(10);

    /// <summary>Creates the driver the options name.</summary>
    /// <exception cref="DeviceOptionsException">The options are invalid.</exception>
    /// <exception cref="BlockDeviceOpenException">The file device's backing store cannot be opened or used.</exception>
    public static IBlockDriver CreateDriver(DeviceOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (options.IoPoll && options.Driver != "null")
        {
            // Refused before the driver opens anything (a file created, a server dialled): only the
            // null driver has poll queues. Accepted, it gave a device whose every polled submission
            // was refused (an outside audit).
            throw new DeviceOptionsException(options.Name, "io_poll", $"the {options.Driver} driver cannot poll (only the null driver has poll queues).");
        }

        IBlockDriver driver = options.Driver switch
        {
            "null" => new NullBlockDriver(options.ToNullBlockOptions(), options.Name),
            "file" => new FileBlockDriver(options.ToFileBlockOptions(), options.Name),
            "nbd" => CreateNbdDriver(options),
            _ => throw new DeviceOptionsException(options.Name, "driver", $"unknown driver '{options.Driver}'."),
        };
        return options.Faults.Enabled ? new FaultInjectionDriver(driver, options.Faults) : driver;
    }

    /// <summary>
    /// The options with an <c>nbd</c> device's <see cref="DeviceOptions.Connections"/> reduced to
    /// the hardware queues <paramref name="topology"/> allows, its possible CPUs (as Linux's blk-mq
    /// caps <c>nr_hw_queues</c> at <c>nr_cpu_ids</c>); other options are returned as given. The
    /// driver sends on one connection per hardware queue and, unlike Linux's nbd driver, does not
    /// fall back to another connection when one dies, so a connection past them would carry no I/O.
    /// </summary>
    public static DeviceOptions FitConnections(DeviceOptions options, CpuTopology topology)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(topology);
        var usable = Math.Max(topology.PossibleCount, 1);
        return options.Driver == "nbd" && options.Connections > usable ? options with { Connections = usable } : options;
    }

    private static Drivers.Nbd.NbdClientDriver CreateNbdDriver(DeviceOptions options)
    {
        var uri = Drivers.Nbd.NbdUri.Parse(options.Uri!);
        try
        {
            return new Drivers.Nbd.NbdClientDriver(new Drivers.Nbd.NbdClientOptions { Uri = uri, Connections = options.Connections, TlsCa = options.TlsCa, TlsVerify = options.TlsVerify }, options.Name);
        }
        catch (IOException ex)
        {
            throw new BlockDeviceOpenException(options.Name, uri.ToString(), OpenFailure.Other, 0, ex.Message);
        }
    }

    /// <summary>Creates a private tag set for a device.</summary>
    public static TagSet CreateTagSet(DeviceOptions options, IBlockDriver driver, CpuTopology topology)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(driver);
        return new TagSet(options.ToTagSetOptions(driver.PayloadSize), topology, driver.InitRequest);
    }

    /// <summary>Creates the request queue of a device on <paramref name="tagSet"/>.</summary>
    public static RequestQueue CreateQueue(DeviceOptions options, TagSet tagSet, IBlockDriver driver, BlockClock? clock = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var queue = new RequestQueue(options.Name, tagSet, driver, options.ToQueueOptions(), clock);
        ApplyLimits(options, queue);
        return queue;
    }

    /// <summary>Applies the options' limits the driver does not set (<c>max_sectors_kb</c>) to a queue.</summary>
    public static void ApplyLimits(DeviceOptions options, RequestQueue queue)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(queue);
        if (options.MaxSectorsKb > 0)
        {
            queue.SetMaxSectors(Math.Min(options.MaxSectorsKb * 2, queue.Limits.MaxHardwareSectors));
        }
    }

    /// <summary>
    /// Creates a registered ring-dispatch device without a control plane: no actors, no timeout
    /// scans. Disposing it shuts the queue down and disposes the driver.
    /// </summary>
    /// <param name="options">The device; <see cref="DeviceOptions.Dispatch"/> must be ring.</param>
    /// <param name="topology">The CPUs.</param>
    /// <param name="softIrq">Per-CPU completion workers for redirected completions.</param>
    /// <param name="clock">Deadline clock.</param>
    /// <param name="sharedTags">A tag set to share instead of a private one.</param>
    public static BlockDevice CreateRingDevice(DeviceOptions options, CpuTopology topology, BlockSoftIrq softIrq, BlockClock? clock = null, TagSet? sharedTags = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Dispatch != DispatchMode.Ring)
        {
            throw new DeviceOptionsException(options.Name, "dispatch", "a device without a control plane can only use ring dispatch.");
        }

        options = FitConnections(options, topology);
        var driver = CreateDriver(options);
        var tagSet = sharedTags ?? CreateTagSet(options, driver, topology);
        var queue = CreateQueue(options, tagSet, driver, clock);
        tagSet.AddQueue(queue);
        queue.Start(new RingRuntime(softIrq));
        queue.Register();
        return new BlockDevice(queue, async device =>
        {
            await device.Queue.ShutdownAsync(DefaultDrainTimeout).ConfigureAwait(false);
            driver.Dispose();
        });
    }
}
