using System.Collections.Concurrent;
using ActorBlk.Actors.Clustering;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Sysfs;
using ActorBlk.Hardware.Topology;
using Akka;
using Akka.Actor;
using Akka.Event;
using DataPlaneQueue = ActorBlk.Hardware.Queues.RequestQueue;
using TagSetState = ActorBlk.Hardware.Tags.TagSet;
using TopologySnapshot = ActorBlk.Hardware.Topology.CpuTopology;

namespace ActorBlk.Actors;

/// <summary>
/// The block layer of one actor system (an Akka extension): creates and destroys devices, owns
/// the CPU topology and the per-CPU completion workers, and hosts the guardian actor
/// (<c>/user/actorblk</c>) that supervises every device.
/// </summary>
/// <remarks>
/// Get it with <see cref="Get"/> on any actor system, or let <c>WithActorBlk</c> set it up in an
/// Akka.Hosting application. Devices are destroyed (drained) when the actor system shuts down
/// through CoordinatedShutdown.
/// </remarks>
public sealed class BlockLayer : IExtension
{
    /// <summary>The guardian's name under <c>/user</c>.</summary>
    public const string GuardianName = "actorblk";

    private readonly ConcurrentDictionary<string, BlockDevice> _devices = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<DataPlaneQueue, DispatchMode> _modes = new();
    private TopologySnapshot? _currentTopology;
    private readonly IActorRef? _registry;
    private readonly DeviceOpener _opener;
    private string? _nbdEndpoint;
    private long _shutdownDrainTicks;

    /// <summary>Created by Akka through <see cref="BlockLayerProvider"/>.</summary>
    public BlockLayer(ExtendedActorSystem system)
    {
        ArgumentNullException.ThrowIfNull(system);
        System = system;

        // Make the library defaults (dispatchers included) visible to the whole system, as Akka's own
        // modules do, so BlockLayer.Get works on a system that never loaded them.
        system.Settings.InjectTopLevelFallback(ActorBlkSettings.DefaultConfig());
        Settings = ActorBlkSettings.Create(system);
        Topology = Settings.BuildTopology();
        SoftIrq = new BlockSoftIrq(Topology);
        Clock = Settings.Clock == ClockSource.Scheduler ? new SchedulerBlockClock(system.Scheduler) : BlockClock.System;
        ClusterDevices = new ClusterDevices(system.Provider is Akka.Cluster.IClusterActorRefProvider
            && system.Settings.Config.GetBoolean("actorblk.cluster.registry.enabled", true));
        Guardian = system.ActorOf(BlockLayerActor.Props(this), GuardianName);

        // The guardian must never stop while the node runs: if it does, the node serves nothing,
        // so it fails loudly and shuts down (README, "Security").
        system.SystemActorOf(Akka.Actor.Props.Create(() => new GuardianWatchdog(this)), GuardianName + "-watchdog");

        var shutdown = CoordinatedShutdown.Get(system);
        shutdown.AddTask(CoordinatedShutdown.PhaseServiceStop, "actorblk-destroy-devices", async () =>
        {
            // Every outstanding I/O must complete (with Offline if need be) while the actors that
            // carry it still run: the phase is cut off after its timeout and the system then stops
            // the actors, so teardown at shutdown drains for a quarter of the phase at most
            // instead of the full drain timeout, and every device is torn down at once.
            var phase = shutdown.Timeout(CoordinatedShutdown.PhaseServiceStop);
            var drain = TimeSpan.FromTicks(Math.Min(Settings.DrainTimeout.Ticks, phase.Ticks / 4));
            Volatile.Write(ref _shutdownDrainTicks, Math.Max(drain.Ticks, TimeSpan.FromMilliseconds(100).Ticks));
            await DestroyAllDevicesAsync().ConfigureAwait(false);
            return Done.Instance;
        });
        // A thread that cannot be pinned to its CPUs keeps running unpinned; say so once per thread.
        Action<string> pinFailed = message => system.Log.Warning("{0}", message);
        CpuAffinity.PinFailed += pinFailed;
        system.WhenTerminated.ContinueWith(_ =>
        {
            CpuAffinity.PinFailed -= pinFailed;
            SoftIrq.Dispose();
        }, TaskScheduler.Default);

        // The cluster-wide registry (README, "Cluster"): on every cluster member unless turned off.
        var registry = system.Settings.Config.GetConfig("actorblk.cluster.registry");
        _opener = new DeviceOpener(this, registry?.GetTimeSpan("remote-check-interval", TimeSpan.FromSeconds(1)) ?? TimeSpan.FromSeconds(1));
        if (ClusterDevices.IsEnabled)
        {
            var poll = registry?.GetTimeSpan("poll-interval", TimeSpan.FromSeconds(1)) ?? TimeSpan.FromSeconds(1);
            _registry = system.ActorOf(DeviceRegistryActor.Props(this, poll), DeviceRegistryActor.ActorName);
            shutdown.AddTask(CoordinatedShutdown.PhaseBeforeClusterShutdown, "actorblk-withdraw-devices", async () =>
            {
                try
                {
                    await _registry.Ask<DeviceRegistryActor.Withdrawn>(DeviceRegistryActor.Withdraw.Instance, TimeSpan.FromSeconds(5)).ConfigureAwait(false);
                }
                catch (AskTimeoutException)
                {
                    // The other members prune this node's entries when it is removed.
                }

                return Done.Instance;
            });
        }
    }

    /// <summary>
    /// Opens a device of the cluster by name: <c>name@host:port</c>, or a plain <c>name</c> when
    /// exactly one node (this one included) has a device of that name. This node's device is
    /// returned as it is; another node's is a local request queue whose driver is the NBD client
    /// connected to the owner's export (README, "Cluster"), shared by every handle of that device
    /// on this node and destroyed, with its connections, when the last handle is closed
    /// (<see cref="ClusterBlockDevice.CloseAsync"/>).
    /// </summary>
    /// <exception cref="ClusterDeviceNotFoundException">No device of the cluster matches.</exception>
    /// <exception cref="AmbiguousClusterDeviceException">A plain name matches devices on several nodes; the message lists the <c>name@host:port</c> choices.</exception>
    /// <exception cref="BlockDeviceOpenException">The owner's NBD export cannot be reached or refuses the device.</exception>
    public Task<ClusterBlockDevice> OpenAsync(string name, CancellationToken cancellationToken = default) =>
        _opener.OpenAsync(name, null, cancellationToken);

    /// <summary>
    /// <see cref="OpenAsync(string, CancellationToken)"/> with the settings of the local queue of a
    /// remote device taken from <paramref name="template"/> (hw_queue_depth, io_timeout, dispatch,
    /// completion, nomerges, rq_affinity, read_only; <c>connections</c> when above 1, else one
    /// connection per hardware queue of the owner's device). Name, driver, URI and size are the
    /// device's own. The template of the first open of a device wins while it is open.
    /// </summary>
    public Task<ClusterBlockDevice> OpenAsync(string name, DeviceOptions? template, CancellationToken cancellationToken = default) =>
        _opener.OpenAsync(name, template, cancellationToken);

    /// <summary>True when <paramref name="name"/> is this node's local queue of another node's device (not published, not exported).</summary>
    internal bool IsImported(string name) => _opener.IsImported(name);

    /// <summary>
    /// Every device of the cluster (name, owner node, capacity, block size, hardware queues,
    /// read-only, state, NBD endpoint) as this node's registry sees it: a snapshot, name resolution
    /// (<c>name</c> or <c>name@host:port</c>) and a way to watch changes. Empty when the actor
    /// system is not a cluster member.
    /// </summary>
    public ClusterDevices ClusterDevices { get; }

    /// <summary>The NBD server address this node's devices are exported at (<c>nbd://host:port</c>), if any.</summary>
    public string? NbdEndpoint => Volatile.Read(ref _nbdEndpoint);

    /// <summary>
    /// Sets the address of this node's NBD server (<c>nbd://host:port</c>; null: none), which the
    /// cluster registry publishes for each device as <c>nbd://host:port/&lt;name&gt;</c>.
    /// </summary>
    public void SetNbdEndpoint(string? endpoint)
    {
        Volatile.Write(ref _nbdEndpoint, string.IsNullOrWhiteSpace(endpoint) ? null : endpoint);
        _registry?.Tell(DeviceRegistryActor.LocalDevicesChanged.Instance);
    }

    /// <summary>The actor system.</summary>
    public ExtendedActorSystem System { get; }

    /// <summary>The <c>actorblk</c> settings.</summary>
    public ActorBlkSettings Settings { get; }

    /// <summary>
    /// How long unregistering a device waits for its I/O to drain before failing the rest: the
    /// drain timeout, or less once the actor system shuts down (see the shutdown task).
    /// </summary>
    internal TimeSpan UnregisterDrainTimeout =>
        Volatile.Read(ref _shutdownDrainTicks) is var ticks and > 0 ? TimeSpan.FromTicks(ticks) : Settings.DrainTimeout;

    /// <summary>The CPU topology devices are mapped on at start.</summary>
    public TopologySnapshot Topology { get; }

    /// <summary>The CPU topology now: the one the last hotplug event left (the start one before any).</summary>
    public TopologySnapshot CurrentTopology => Volatile.Read(ref _currentTopology) ?? Topology;

    /// <summary>The guardian actor, <c>/user/actorblk</c>.</summary>
    public IActorRef Guardian { get; }

    /// <summary>Every device currently registered.</summary>
    public IReadOnlyCollection<IBlockDevice> Devices => _devices.Values.ToArray();

    /// <summary>
    /// Why the block layer failed (its guardian or one of its actors stopped unexpectedly), or null.
    /// A failed layer has run coordinated shutdown with <see cref="NodeFailed"/>; a host exits non-zero.
    /// </summary>
    public string? FailureReason => Volatile.Read(ref _failureReason);

    private string? _failureReason;

    internal BlockSoftIrq SoftIrq { get; }

    internal BlockClock Clock { get; }

    /// <summary>The block layer of <paramref name="system"/>, created on first use.</summary>
    public static BlockLayer Get(ActorSystem system)
    {
        ArgumentNullException.ThrowIfNull(system);
        return system.WithExtension<BlockLayer, BlockLayerProvider>();
    }

    /// <summary>
    /// Creates a device and completes when it is registered and serving I/O.
    /// </summary>
    /// <exception cref="DeviceOptionsException">The options are invalid, or the name is taken.</exception>
    public async Task<IBlockDevice> CreateDeviceAsync(DeviceOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var created = await Guardian.Ask<Created>(new Create(options), Settings.DrainTimeout, cancellationToken).ConfigureAwait(false);
        return created.Device;
    }

    /// <summary>
    /// Creates a device on a driver of the application's own (any <see cref="IBlockDriver"/>),
    /// with <paramref name="options"/> for everything else (<c>driver</c> and <c>path</c> are
    /// ignored; fault options still wrap it). The layer owns the driver from now on and disposes
    /// it with the device; if creation fails it is disposed at once.
    /// </summary>
    /// <exception cref="DeviceOptionsException">The options are invalid, or the name is taken.</exception>
    public async Task<IBlockDevice> CreateDeviceAsync(DeviceOptions options, IBlockDriver driver, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(driver);
        try
        {
            (options with { Driver = "null", Path = null }).Validate();
        }
        catch
        {
            driver.Dispose();
            throw;
        }

        var created = await Guardian.Ask<Created>(new Create(options, driver), Settings.DrainTimeout, cancellationToken).ConfigureAwait(false);
        return created.Device;
    }

    /// <summary>
    /// Allocates a device without registering it (phases 1 and 2 of §10, no registration): its
    /// driver, tag set and queue exist, but nothing per CPU or per hardware queue is started (no
    /// actors, no dispatch threads, no attribute tree) and I/O fails with
    /// <see cref="InvalidRequestReason.NotRegistered"/>. Register it with
    /// <see cref="RegisterDeviceAsync"/>, or destroy it (cheaply) with <see cref="DestroyDeviceAsync"/>.
    /// </summary>
    /// <exception cref="DeviceOptionsException">The options are invalid, or the name is taken.</exception>
    public async Task<IBlockDevice> AllocateDeviceAsync(DeviceOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var created = await Guardian.Ask<Created>(new Allocate(options), Settings.DrainTimeout, cancellationToken).ConfigureAwait(false);
        return created.Device;
    }

    /// <summary>Registers a device made by <see cref="AllocateDeviceAsync"/>; completes when it serves I/O.</summary>
    /// <exception cref="KeyNotFoundException">No device has that name.</exception>
    /// <exception cref="InvalidOperationException">It is registered already, or it is a stacked device.</exception>
    public async Task<IBlockDevice> RegisterDeviceAsync(string name, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        var reply = await Guardian.Ask<object>(new Register(name), Settings.DrainTimeout, cancellationToken).ConfigureAwait(false);
        return reply switch
        {
            Created c => c.Device,
            NoSuchDevice => throw new KeyNotFoundException($"There is no device '{name}'."),
            _ => throw new InvalidOperationException($"Unexpected reply {reply}."),
        };
    }

    /// <summary>
    /// Creates a stacked device as device-mapper does (<c>dmsetup create</c> without a table): a
    /// placeholder queue under <paramref name="name"/>, neither bio-based nor multi-queue until the
    /// first <see cref="LoadTableAsync"/>. Its I/O fails with NotRegistered until then.
    /// </summary>
    /// <exception cref="DeviceOptionsException">The name is taken or invalid.</exception>
    public async Task<IBlockDevice> CreateStackedDeviceAsync(string name, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        var created = await Guardian.Ask<Created>(new CreateStacked(name), Settings.DrainTimeout, cancellationToken).ConfigureAwait(false);
        return created.Device;
    }

    /// <summary>
    /// Loads a table into a stacked device. The first table decides the device's type and registers
    /// it; a later one replaces the target while the device is frozen (in-flight I/O drains first).
    /// Member devices cannot be destroyed while a stacked device uses them.
    /// </summary>
    /// <exception cref="KeyNotFoundException">No device has that name.</exception>
    /// <exception cref="DeviceOptionsException">The table is refused (unknown or busy member, bad geometry).</exception>
    public async Task<IBlockDevice> LoadTableAsync(string name, StackTable table, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(table);
        var reply = await Guardian.Ask<object>(new LoadTable(name, table), Settings.DrainTimeout, cancellationToken).ConfigureAwait(false);
        return reply switch
        {
            Created c => c.Device,
            NoSuchDevice => throw new KeyNotFoundException($"There is no device '{name}'."),
            _ => throw new InvalidOperationException($"Unexpected reply {reply}."),
        };
    }

    /// <summary>
    /// Creates a device, blocking the calling thread until it is registered. Prefer
    /// <see cref="CreateDeviceAsync(DeviceOptions, CancellationToken)"/> in asynchronous code.
    /// </summary>
    /// <exception cref="DeviceOptionsException">The options are invalid, or the name is taken.</exception>
    public IBlockDevice CreateDevice(DeviceOptions options) =>
        Task.Run(() => CreateDeviceAsync(options)).GetAwaiter().GetResult();

    /// <summary>
    /// Unregisters and destroys a device: in-flight I/O drains (or fails with Offline after the
    /// drain timeout), later I/O fails with Offline. Completes with the number of failed requests.
    /// </summary>
    /// <exception cref="KeyNotFoundException">No device has that name.</exception>
    /// <exception cref="DeviceBusyException">A stacked device is built on it (EBUSY).</exception>
    /// <exception cref="TimeoutException">The removal did not finish in time; the name stays taken until it does.</exception>
    public async Task<int> DestroyDeviceAsync(string name, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        // Teardown waits up to the drain timeout for requests to drain, and as long again for the
        // stragglers it failed to arrive (RequestQueue.ShutdownAsync), then releases the device.
        var limit = (2 * Settings.DrainTimeout) + TimeSpan.FromSeconds(10);
        object reply;
        try
        {
            reply = await Guardian.Ask<object>(new Destroy(name), limit, cancellationToken).ConfigureAwait(false);
        }
        catch (AskTimeoutException ex)
        {
            throw new TimeoutException($"Destroying device '{name}' did not finish within {limit.TotalSeconds} s; it is still being removed and its name stays taken until it is.", ex);
        }


        return reply switch
        {
            Destroyed d => d.FailedRequests,
            NoSuchDevice => throw new KeyNotFoundException($"There is no device '{name}'."),
            DeviceBusy busy => throw new DeviceBusyException(name, busy.Holder),
            _ => throw new InvalidOperationException($"Unexpected reply {reply}."),
        };
    }

    /// <summary>
    /// The request-queue actor's summary of a device: its health, the timeouts, device errors and
    /// resets supervision has seen.
    /// </summary>
    /// <exception cref="KeyNotFoundException">No device has that name.</exception>
    public async Task<RequestQueue.Info> GetDeviceInfoAsync(string name, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        var reply = await Guardian.Ask<object>(new GetDeviceInfo(name), TimeSpan.FromSeconds(10), cancellationToken).ConfigureAwait(false);
        return reply switch
        {
            RequestQueue.Info info => info,
            NoSuchDevice => throw new KeyNotFoundException($"There is no device '{name}'."),
            _ => throw new InvalidOperationException($"Unexpected reply {reply}."),
        };
    }

    /// <summary>
    /// Sends a CPU hotplug event to the topology actor: every registered queue is frozen, drained,
    /// re-mapped and unfrozen before the answer comes.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The CPU is not present.</exception>
    /// <exception cref="InvalidOperationException">The CPU is the last one online.</exception>
    public async Task<CpuTopology.TopologyChanged> SetCpuOnlineAsync(int cpu, bool online, CancellationToken cancellationToken = default)
    {
        var topology = System.ActorSelection(Guardian.Path / "cpu-topology");
        object message = online ? new CpuTopology.CpuOnline(cpu) : new CpuTopology.CpuOffline(cpu);
        return await topology.Ask<CpuTopology.TopologyChanged>(message, Settings.DrainTimeout + TimeSpan.FromSeconds(10), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// The attribute paths of every registered device that start with <paramref name="prefix"/>
    /// (<c>block/nullb0/queue/</c>, <c>kernel/debug/block/</c>, or empty for all), sorted.
    /// </summary>
    public IReadOnlyList<string> ListAttributes(string prefix = "")
    {
        ArgumentNullException.ThrowIfNull(prefix);
        var p = Normalize(prefix);
        return CpuAttributes.List(CurrentTopology).Concat(_devices.Values.SelectMany(d => d.Attributes.List()))
            .Where(path => path.StartsWith(p, StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToArray();
    }

    /// <summary>
    /// Reads an attribute: <c>block/&lt;dev&gt;/queue/nr_requests</c>, <c>block/&lt;dev&gt;/mq/0/cpu_list</c>,
    /// <c>devices/system/cpu/online</c> ...
    /// </summary>
    /// <exception cref="AttributeException">ENOENT: no such device or attribute.</exception>
    public string ReadAttribute(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var p = Normalize(path);
        return CpuAttributes.Owns(p) ? CpuAttributes.Read(CurrentTopology, p) : AttributesOf(p).Read(p);
    }

    /// <summary>
    /// Writes an attribute with the kernel's rules for it. Writing 0 or 1 to
    /// <c>devices/system/cpu/cpu&lt;N&gt;/online</c> is a hotplug event (<see cref="SetCpuOnlineAsync"/>).
    /// </summary>
    /// <exception cref="AttributeException">ENOENT, EACCES (read-only), EINVAL (refused value) or EBUSY (the last online CPU); nothing changed.</exception>
    public async ValueTask WriteAttributeAsync(string path, string value)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(value);
        var p = Normalize(path);
        if (!CpuAttributes.Owns(p))
        {
            await AttributesOf(p).WriteAsync(p, value).ConfigureAwait(false);
            return;
        }

        var (cpu, online) = CpuAttributes.ParseWrite(CurrentTopology, p, value);
        try
        {
            await SetCpuOnlineAsync(cpu, online).ConfigureAwait(false);
        }
        catch (InvalidOperationException ex)
        {
            throw new AttributeException(p, AttributeErrno.EBUSY, ex.Message);
        }
        catch (ArgumentOutOfRangeException ex)
        {
            throw new AttributeException(p, AttributeErrno.ENOENT, ex.Message.Split(" (Parameter")[0]);
        }
    }

    // "/sys/block/nullb0/queue/x", "block/nullb0/queue/x" and "kernel/debug/block/nullb0/..." name the device in the path.
    // The path is already normalised by the caller.
    private QueueAttributes AttributesOf(string path)
    {
        var parts = path.Split('/');
        var device = parts switch
        {
            ["block", var name, ..] => name,
            ["kernel", "debug", "block", var name, ..] => name,
            _ => null,
        };
        return device is not null && _devices.TryGetValue(device, out var d)
            ? d.Attributes
            : throw new AttributeException(path, AttributeErrno.ENOENT, device is null ? "no such attribute" : $"there is no device '{device}'");
    }

    private static string Normalize(string path)
    {
        var p = path.Trim().Trim('/');
        return p.StartsWith("sys/", StringComparison.Ordinal) ? p[4..] : p == "sys" ? string.Empty : p;
    }

    /// <summary>The device named <paramref name="name"/>, if it exists.</summary>
    public bool TryGetDevice(string name, out IBlockDevice device)
    {
        var found = _devices.TryGetValue(name, out var d);
        device = d!;
        return found;
    }

    /// <summary>
    /// Records that the layer failed (an actor it cannot serve without stopped), logs it at error
    /// level and runs coordinated shutdown with <see cref="NodeFailed"/>. The first reason wins.
    /// </summary>
    internal void Fail(string reason)
    {
        if (Interlocked.CompareExchange(ref _failureReason, reason, null) is not null)
        {
            return;
        }

        System.Log.Error("ActorBlk failed: {Reason}; the node serves nothing and shuts down", reason);
        _ = CoordinatedShutdown.Get(System).Run(NodeFailed.Instance);
    }

    /// <summary>The coordinated-shutdown reason of a failed block layer (<see cref="FailureReason"/>).</summary>
    public sealed class NodeFailed : CoordinatedShutdown.Reason
    {
        /// <summary>The instance.</summary>
        public static readonly NodeFailed Instance = new();

        private NodeFailed()
        {
        }

        /// <inheritdoc />
        public override int ExitCode => 70;
    }

    // Watches the guardian from outside /user: its stop outside a shutdown fails the layer.
    private sealed class GuardianWatchdog : ReceiveActor
    {
        public GuardianWatchdog(BlockLayer layer)
        {
            Context.Watch(layer.Guardian);
            Receive<Terminated>(t =>
            {
                if (CoordinatedShutdown.Get(Context.System).ShutdownReason is null)
                {
                    layer.Fail($"the guardian {t.ActorRef.Path} stopped unexpectedly");
                }

                Context.Stop(Self);
            });
        }
    }

    internal void PublishTopology(TopologySnapshot topology) => Volatile.Write(ref _currentTopology, topology);

    internal DispatchMode ModeOf(DataPlaneQueue queue) => _modes.TryGetValue(queue, out var mode) ? mode : DispatchMode.Ring;

    internal void Track(BlockDevice device, DispatchMode mode) => _modes[device.Queue] = mode;

    internal void Publish(BlockDevice device)
    {
        _devices[device.Name] = device;
        _registry?.Tell(DeviceRegistryActor.LocalDevicesChanged.Instance);
    }

    internal void Forget(string name)
    {
        if (_devices.TryRemove(name, out var device))
        {
            _modes.TryRemove(device.Queue, out _);
            _registry?.Tell(DeviceRegistryActor.LocalDevicesChanged.Instance);
        }
    }

    // Every device the guardian knows, registered or not; stacked devices go before the devices
    // they are built on (a busy member waits for the next pass).
    private async Task DestroyAllDevicesAsync()
    {
        if (FailureReason is not null)
        {
            // The guardian may be gone; its children (the devices) stopped with it.
            return;
        }

        var names = await Guardian.Ask<string[]>(AllDeviceNames.Instance, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        var left = new List<string>(names);
        while (left.Count > 0)
        {
            // Devices are torn down together, so shutdown takes one drain, not one per device.
            var busy = new ConcurrentBag<string>();
            await Task.WhenAll(left.Select(async name =>
            {
                try
                {
                    await DestroyDeviceAsync(name).ConfigureAwait(false);
                }
                catch (KeyNotFoundException)
                {
                    // Destroyed concurrently.
                }
                catch (DeviceBusyException)
                {
                    busy.Add(name);
                }
            })).ConfigureAwait(false);

            if (busy.Count == left.Count)
            {
                break;
            }

            left = [.. busy];
        }
    }

    internal sealed record AllDeviceNames : INoSerializationVerificationNeeded
    {
        public static readonly AllDeviceNames Instance = new();
    }

    // ------------------------------------------------------------------ guardian protocol

    /// <summary>Create a device, on <paramref name="Driver"/> when given (reply <see cref="Created"/>, or a failure). Local only.</summary>
    public sealed record Create(DeviceOptions Options, IBlockDriver? Driver = null) : INoSerializationVerificationNeeded;

    /// <summary>The device exists and serves I/O. Local only.</summary>
    public sealed record Created(BlockDevice Device) : INoSerializationVerificationNeeded;

    /// <summary>Allocate a device without registering it (reply <see cref="Created"/>, or a failure). Local only.</summary>
    public sealed record Allocate(DeviceOptions Options, IBlockDriver? Driver = null) : INoSerializationVerificationNeeded;

    /// <summary>Register an allocated device (reply <see cref="Created"/> once it serves I/O). Local only.</summary>
    public sealed record Register(string Name) : INoSerializationVerificationNeeded;

    /// <summary>Create a stacked device's placeholder (reply <see cref="Created"/>). Local only.</summary>
    public sealed record CreateStacked(string Name) : INoSerializationVerificationNeeded;

    /// <summary>Load a table into a stacked device (reply <see cref="Created"/> once it serves I/O). Local only.</summary>
    public sealed record LoadTable(string Name, StackTable Table) : INoSerializationVerificationNeeded;

    /// <summary>The device cannot be destroyed: <paramref name="Holder"/> is built on it.</summary>
    public sealed record DeviceBusy(string Name, string Holder) : IActorBlkMessage;

    /// <summary>Destroy a device (reply <see cref="Destroyed"/> or <see cref="NoSuchDevice"/>).</summary>
    public sealed record Destroy(string Name) : IActorBlkMessage;

    /// <summary>The device is gone.</summary>
    public sealed record Destroyed(string Name, int FailedRequests) : IActorBlkMessage;

    /// <summary>No device has that name; <paramref name="Id"/> is the request id of an <see cref="Io"/> (0 otherwise).</summary>
    public sealed record NoSuchDevice(string Name, long Id = 0) : IActorBlkMessage;

    /// <summary>Asks for a device's <see cref="RequestQueue.Info"/>; the answer is that, or <see cref="NoSuchDevice"/>.</summary>
    public sealed record GetDeviceInfo(string Name) : IActorBlkQuery;

    /// <summary>Ask for the devices (reply <see cref="DeviceList"/>).</summary>
    public sealed record ListDevices : IActorBlkQuery
    {
        /// <summary>The instance.</summary>
        public static readonly ListDevices Instance = new();
    }

    /// <summary>The devices of this node.</summary>
    public sealed record DeviceList(DeviceSummary[] Devices) : IActorBlkMessage;

    /// <summary>One device.</summary>
    public sealed record DeviceSummary(string Name, string Driver, long Capacity, int LogicalBlockSize, int HardwareQueues, string Dispatch, string TagSet) : IActorBlkMessage;

    /// <summary>
    /// An I/O for a device of this node, addressed by name: the cluster's way in. The sender
    /// receives <see cref="SoftwareContext.Completed"/>, <see cref="SoftwareContext.Rejected"/> or
    /// <see cref="NoSuchDevice"/>, each with <paramref name="Id"/>. Every field is checked before
    /// anything is allocated (<c>MessageIo.Check</c>); over remoting a read or write moves at most
    /// one frame of data.
    /// </summary>
    public sealed record Io(string Device, long Id, BlockOp Op, long Offset, int Length, byte[]? Data = null, RequestFlags Flags = RequestFlags.None, int Cpu = -1) : IActorBlkMessage;
}

/// <summary>Creates the <see cref="BlockLayer"/> extension.</summary>
public sealed class BlockLayerProvider : ExtensionIdProvider<BlockLayer>
{
    /// <inheritdoc />
    public override BlockLayer CreateExtension(ExtendedActorSystem system) => new(system);
}

/// <summary>The guardian: creates and destroys devices and their tag sets, routes I/O by device name.</summary>
internal sealed class BlockLayerActor : ReceiveActor
{
    private readonly BlockLayer _layer;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly Dictionary<string, Entry> _devices = new(StringComparer.Ordinal);
    private readonly Dictionary<string, SharedTagSet> _sharedTagSets = new(StringComparer.Ordinal);
    private IActorRef _topology = ActorRefs.Nobody;
    private IActorRef _sysfs = ActorRefs.Nobody;

    // Actor names carry an incarnation number: a device destroyed and created again under the
    // same name gets new actors while the old ones may still be stopping.
    private long _incarnation;

    public BlockLayerActor(BlockLayer layer)
    {
        _layer = layer;
        Receive<BlockLayer.Create>(HandleCreate);
        Receive<BlockLayer.Allocate>(HandleAllocate);
        Receive<BlockLayer.AllDeviceNames>(_ => Sender.Tell(_devices.Keys.ToArray()));
        Receive<BlockLayer.Register>(HandleRegister);
        Receive<BlockLayer.CreateStacked>(HandleCreateStacked);
        Receive<BlockLayer.LoadTable>(HandleLoadTable);
        Receive<RequestQueue.Ready>(HandleReady);
        Receive<BlockLayer.Destroy>(HandleDestroy);
        Receive<RequestQueue.Unregistered>(HandleUnregistered);
        Receive<BlockLayer.Io>(HandleIo);
        Receive<ListClusterDevices>(_ => Sender.Tell(new ClusterDeviceList([.. _layer.ClusterDevices.Snapshot], _layer.ClusterDevices.IsEnabled)));
        Receive<RemoteSurface.AdminRefused>(refused =>
        {
            _log.Warning("Refused {Request} from {Sender}: {Reason}", refused.Request.GetType().Name, Sender.Path, refused.Reason);
            Sender.Tell(new RemoteSurface.NotAuthorized(refused.Request.ToString() ?? string.Empty, refused.Reason));
        });
        Receive<BlockLayer.ListDevices>(_ => Sender.Tell(new BlockLayer.DeviceList(_devices.Values.Where(e => e.Ready).Select(Summary).ToArray())));
        Receive<BlockLayer.GetDeviceInfo>(get =>
        {
            if (get.Name is { Length: > 0 and <= RemoteSurface.MaxDeviceName } && _devices.TryGetValue(get.Name, out var entry) && entry is { Ready: true, Actor: { } actor })
            {
                actor.Forward(RequestQueue.GetInfo.Instance);
            }
            else
            {
                Sender.Tell(new BlockLayer.NoSuchDevice(get.Name ?? string.Empty));
            }
        });
        Receive<Terminated>(HandleTerminated);
    }

    public static Props Props(BlockLayer layer) => Akka.Actor.Props.Create(() => new BlockLayerActor(layer));

    protected override void PreStart()
    {
        _topology = Context.ActorOf(
            CpuTopology.Props(_layer.Topology, _layer.Settings.WatchedOnlineFile, _layer.Settings.WatchInterval, _layer.PublishTopology), "cpu-topology");
        _sysfs = Context.ActorOf(Sysfs.Props(_layer), Sysfs.ActorName);
        Context.Watch(_topology);
        Context.Watch(_sysfs);
    }

    // A restart would stop every device with the guardian's children: the layer fails instead and
    // the node shuts down (never serving nothing while it runs).
    protected override void PreRestart(Exception reason, object message)
    {
        _layer.Fail($"the guardian failed on {message?.GetType().Name ?? "a message"}: {reason.Message}");
        base.PreRestart(reason, message);
    }

    // A device that fails while it initialises is stopped; its creator gets the failure.
    protected override SupervisorStrategy SupervisorStrategy() => new OneForOneStrategy(ex =>
    {
        _log.Error(ex, "A device actor failed; stopping it");
        return Directive.Stop;
    });

    private void HandleCreate(BlockLayer.Create create)
    {
        if (Build(create.Options, create.Driver) is { } entry)
        {
            entry.Creator = Sender;
            StartActor(entry);
        }
    }

    // Allocation only: driver, tag set and queue exist; no actor, no dispatch thread, no sysfs.
    private void HandleAllocate(BlockLayer.Allocate allocate)
    {
        if (Build(allocate.Options, allocate.Driver) is { } entry)
        {
            Sender.Tell(new BlockLayer.Created(entry.Device));
        }
    }

    private void HandleRegister(BlockLayer.Register register)
    {
        if (!_devices.TryGetValue(register.Name, out var entry))
        {
            Sender.Tell(new BlockLayer.NoSuchDevice(register.Name));
            return;
        }

        if (entry.Actor is not null || entry.Device.Queue.Kind != QueueKind.MultiQueue)
        {
            Sender.Tell(new Status.Failure(new InvalidOperationException(
                $"Device {register.Name} is {(entry.Actor is not null ? "already registered" : "a stacked device; load a table to register it")}.")));
            return;
        }

        entry.Creator = Sender;
        StartActor(entry);
    }

    // Builds the data plane of a device (driver, tag set, queue) and reserves its name. Replies with
    // a failure and returns null when the options or the driver are refused.
    private Entry? Build(DeviceOptions options, IBlockDriver? driver)
    {
        if (_devices.ContainsKey(options.Name))
        {
            driver?.Dispose();
            Sender.Tell(new Status.Failure(new DeviceOptionsException(options.Name, "name", "a device with this name already exists.")));
            return null;
        }

        BlockDevice device;
        TagSetState set;
        try
        {
            if (driver is null)
            {
                options.Validate();
                driver = DeviceBuilder.CreateDriver(options);
            }
            else
            {
                (options with { Driver = "null", Path = null }).Validate();
                driver = options.Faults.Enabled ? new FaultInjectionDriver(driver, options.Faults) : driver;
            }

            if (options.SharedTags && _sharedTagSets.TryGetValue(options.TagSetName, out var shared))
            {
                set = shared.Set;
            }
            else
            {
                set = DeviceBuilder.CreateTagSet(options, driver, _layer.Topology);
                if (options.SharedTags)
                {
                    _sharedTagSets[options.TagSetName] = new SharedTagSet(set);
                }
            }

            if (set.DepthWasClamped)
            {
                _log.Info("{Device}: hw_queue_depth {Requested} reduced to {Depth} (BLK_MQ_MAX_DEPTH)", options.Name, set.RequestedDepth, set.QueueDepth);
            }

            // Two-phase initialisation (§10): the generic queue first, then the multi-queue parts.
            var queue = DataPlaneQueue.Allocate(options.Name, set.Map.Topology, driver.Limits, _layer.Clock);
            queue.InitializeMq(set, driver, options.ToQueueOptions());
            DeviceBuilder.ApplyLimits(options, queue);
            var name = options.Name;
            device = new BlockDevice(queue, async _ => await _layer.DestroyDeviceAsync(name).ConfigureAwait(false));
        }
        catch (Exception ex) when (ex is ArgumentException or BlockDeviceException or IOException or UnauthorizedAccessException or InvalidOperationException)
        {
            driver?.Dispose();
            _log.Warning("Refused to create device {Device}: {Reason}", options.Name, ex.Message);
            Sender.Tell(new Status.Failure(ex));
            return null;
        }

        var entry = new Entry(device, set, options);
        _devices[options.Name] = entry;
        return entry;
    }

    // Registration: the tag-set actor (created on first use), the request-queue actor and its
    // children; the actor answers Ready once joined to its tag set and the CPU topology.
    private void StartActor(Entry entry)
    {
        var options = entry.Options;
        if (options.SharedTags)
        {
            var shared = _sharedTagSets[options.TagSetName];
            shared.Actor ??= Context.ActorOf(TagSet.Props(shared.Set), $"shared-{options.TagSetName}-{++_incarnation}");
            entry.TagSetActor = shared.Actor;
        }
        else
        {
            entry.TagSetActor = Context.ActorOf(TagSet.Props(entry.TagSet!), $"tags-{options.Name}-{++_incarnation}");
        }

        _layer.Track(entry.Device, options.Dispatch);
        entry.Actor = Context.ActorOf(RequestQueue.Props(entry.Device, entry.TagSetActor, _topology, _layer, options), $"dev-{options.Name}-{++_incarnation}");
        Context.Watch(entry.Actor);
    }

    // dm create: a placeholder queue under the name, neither bio-based nor multi-queue yet.
    private void HandleCreateStacked(BlockLayer.CreateStacked create)
    {
        if (_devices.ContainsKey(create.Name))
        {
            Sender.Tell(new Status.Failure(new DeviceOptionsException(create.Name, "name", "a device with this name already exists.")));
            return;
        }

        try
        {
            var queue = DataPlaneQueue.Allocate(create.Name, _layer.Topology, clock: _layer.Clock);
            var name = create.Name;
            var device = new BlockDevice(queue, async _ => await _layer.DestroyDeviceAsync(name).ConfigureAwait(false));
            _devices[name] = new Entry(device, null, new DeviceOptions { Name = name, Driver = "stacked" });
            Sender.Tell(new BlockLayer.Created(device));
        }
        catch (ArgumentException ex)
        {
            Sender.Tell(new Status.Failure(new DeviceOptionsException(create.Name, "name", ex.Message)));
        }
    }

    // dm table load + resume. The first table decides what the device is (§10 item 3): a linear or
    // striped table makes it bio-based and registers it. A later table of the same kind replaces
    // the target while the queue is frozen (suspend, swap, resume).
    private void HandleLoadTable(BlockLayer.LoadTable load)
    {
        if (!_devices.TryGetValue(load.Name, out var entry))
        {
            Sender.Tell(new BlockLayer.NoSuchDevice(load.Name));
            return;
        }

        var queue = entry.Device.Queue;
        if (queue.Kind == QueueKind.MultiQueue || entry.Destroyers.Count > 0)
        {
            Sender.Tell(new Status.Failure(new InvalidOperationException($"Device {load.Name} is {(entry.Destroyers.Count > 0 ? "being removed" : "not a stacked device")}.")));
            return;
        }

        StackTarget target;
        try
        {
            var members = load.Table.MemberNames.Select(m => MemberOf(load.Name, m)).ToArray();
            target = load.Table.Build(members);
        }
        catch (Exception ex) when (ex is ArgumentException or KeyNotFoundException or InvalidOperationException)
        {
            Sender.Tell(new Status.Failure(new DeviceOptionsException(load.Name, "table", ex.Message)));
            return;
        }

        if (queue.Kind == QueueKind.Placeholder)
        {
            queue.InitializeBioBased(target);
            entry.Holds = [.. target.Members.Select(m => m.Name)];
            entry.Actor = Context.ActorOf(StackedDevice.Props(entry.Device, _layer.Settings.DrainTimeout), $"dev-{load.Name}-{++_incarnation}");
            Context.Watch(entry.Actor);
            entry.Creator = Sender;
            return;
        }

        entry.Actor!.Forward(new StackedDevice.SwapTarget(target));
        entry.Holds = [.. target.Members.Select(m => m.Name)];
    }

    private IBlockDevice MemberOf(string stacked, string member)
    {
        if (member == stacked)
        {
            throw new ArgumentException($"{stacked} cannot be a member of itself.");
        }

        return _devices.TryGetValue(member, out var m) && m.Ready && m.Destroyers.Count == 0
            ? m.Device
            : throw new KeyNotFoundException($"member device '{member}' does not exist or is not registered.");
    }

    private void HandleReady(RequestQueue.Ready ready)
    {
        if (!_devices.TryGetValue(ready.Name, out var entry))
        {
            return;
        }

        entry.Ready = true;
        _layer.Publish(entry.Device);
        var queue = entry.Device.Queue;
        _log.Info("{Device}: {Driver} driver: {Description}", ready.Name,
            queue.Kind == QueueKind.MultiQueue ? queue.Driver.Kind : "bio-based", queue.Kind == QueueKind.MultiQueue ? queue.Driver.Description : queue.BioDriver!.Description);
        entry.Creator?.Tell(new BlockLayer.Created(entry.Device));
        entry.Creator = null;
    }

    private void HandleDestroy(BlockLayer.Destroy destroy)
    {
        if (destroy.Name is not { Length: > 0 and <= RemoteSurface.MaxDeviceName } || !_devices.TryGetValue(destroy.Name, out var entry))
        {
            Sender.Tell(new BlockLayer.NoSuchDevice(destroy.Name ?? string.Empty));
            return;
        }

        var holder = _devices.Values.FirstOrDefault(e => e.Holds.Contains(destroy.Name));
        if (holder is not null)
        {
            Sender.Tell(new BlockLayer.DeviceBusy(destroy.Name, holder.Options.Name));
            return;
        }

        if (entry.Actor is null)
        {
            // Never registered: nothing runs for it, so destroying it is only releasing it.
            _devices.Remove(destroy.Name);
            entry.Device.Queue.Destroy();
            if (entry.Device.Queue.Kind == QueueKind.MultiQueue)
            {
                entry.Device.Queue.Driver.Dispose();
            }

            ReleaseTagSet(entry);
            Sender.Tell(new BlockLayer.Destroyed(destroy.Name, 0));
            return;
        }

        entry.Destroyers.Add(Sender);
        if (entry.Destroyers.Count == 1)
        {
            entry.Actor.Tell(RequestQueue.Unregister.Instance);
        }
    }

    private void HandleUnregistered(RequestQueue.Unregistered done)
    {
        if (!_devices.Remove(done.Name, out var entry))
        {
            return;
        }

        Context.Unwatch(entry.Actor!);
        _layer.Forget(done.Name);
        ReleaseTagSet(entry);
        foreach (var destroyer in entry.Destroyers)
        {
            destroyer.Tell(new BlockLayer.Destroyed(done.Name, done.FailedRequests));
        }
    }

    private void HandleTerminated(Terminated terminated)
    {
        if (terminated.ActorRef.Equals(_topology) || terminated.ActorRef.Equals(_sysfs))
        {
            // Without either the node cannot re-map or answer clients: fail it, never limp on.
            _layer.Fail($"{terminated.ActorRef.Path} stopped unexpectedly");
            return;
        }

        var entry = _devices.Values.FirstOrDefault(e => terminated.ActorRef.Equals(e.Actor));
        if (entry is null)
        {
            return;
        }

        if (entry is { Ready: true, Destroyers.Count: 0 })
        {
            // A serving device's actor stopped without being destroyed.
            _layer.Fail($"the actor of device {entry.Options.Name} ({terminated.ActorRef.Path}) stopped unexpectedly");
        }

        // The device actor died without unregistering (it failed while initialising).
        _devices.Remove(entry.Options.Name);
        _layer.Forget(entry.Options.Name);
        ReleaseTagSet(entry);
        entry.Creator?.Tell(new Status.Failure(new InvalidOperationException($"Device {entry.Options.Name} failed while it was being registered; see the log.")));
        foreach (var destroyer in entry.Destroyers)
        {
            destroyer.Tell(new BlockLayer.Destroyed(entry.Options.Name, 0));
        }
    }

    private void HandleIo(BlockLayer.Io io)
    {
        if (io.Device is { Length: > 0 and <= RemoteSurface.MaxDeviceName } && _devices.TryGetValue(io.Device, out var entry) && entry is { Ready: true, Actor: { } actor })
        {
            actor.Forward(new RequestQueue.Io(io.Id, io.Op, io.Offset, io.Length, io.Data, io.Flags, io.Cpu));
        }
        else
        {
            Sender.Tell(new BlockLayer.NoSuchDevice(io.Device ?? string.Empty, io.Id));
        }
    }

    private void ReleaseTagSet(Entry entry)
    {
        if (entry.TagSet is not { } set)
        {
            return;
        }

        if (!entry.Options.SharedTags)
        {
            if (entry.TagSetActor is { } actor)
            {
                Context.Stop(actor);
            }
        }
        else if (set.Queues.Count == 0 && _devices.Values.All(e => e.TagSet != set)
                 && _sharedTagSets.Remove(entry.Options.TagSetName, out var shared) && shared.Actor is { } sharedActor)
        {
            Context.Stop(sharedActor);
        }
    }

    private static BlockLayer.DeviceSummary Summary(Entry e) => e.Device.Queue.Kind == QueueKind.MultiQueue
        ? new(e.Device.Name, e.Device.Queue.Driver.Kind, e.Device.Capacity, e.Device.LogicalBlockSize,
            e.Device.Queue.HardwareContexts.Count, e.Options.Dispatch.ToString().ToLowerInvariant(), e.Device.Queue.TagSet.Name)
        : new(e.Device.Name, (e.Device.Queue.BioDriver as StackTarget)?.TargetType ?? "stacked", e.Device.Capacity, e.Device.LogicalBlockSize,
            0, "bio", string.Empty);

    private sealed class SharedTagSet(TagSetState set)
    {
        public TagSetState Set { get; } = set;

        // Created when the first queue of the set registers.
        public IActorRef? Actor { get; set; }
    }

    private sealed class Entry(BlockDevice device, TagSetState? tagSet, DeviceOptions options)
    {
        public BlockDevice Device { get; } = device;

        public TagSetState? TagSet { get; } = tagSet;

        public DeviceOptions Options { get; } = options;

        // Null until the device registers.
        public IActorRef? Actor { get; set; }

        public IActorRef? TagSetActor { get; set; }

        public IActorRef? Creator { get; set; }

        public bool Ready { get; set; }

        public List<IActorRef> Destroyers { get; } = [];

        // Devices this stacked device is built on: they cannot be destroyed while it lives.
        public string[] Holds { get; set; } = [];
    }
}

/// <summary>Request deadlines on the actor system scheduler's clock, so TestKit virtual time moves them.</summary>
internal sealed class SchedulerBlockClock(IScheduler scheduler) : BlockClock
{
    public override long NowMilliseconds => (long)scheduler.MonotonicClock.TotalMilliseconds;
}
