using ActorBlk.Actors.Clustering;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Tags;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

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

    // Registrations so far: each device's place in the order they registered (DeviceList's order,
    // the kernel's /proc/diskstats order, which follows device_add).
    private long _registrations;

    public BlockLayerActor(BlockLayer layer)
    {
        _layer = layer;
        Receive<BlockLayer.Create>(HandleCreate);
        Receive<BlockLayer.Allocate>(HandleAllocate);
        // The members of stacked devices apart: a node's shutdown stops them after the rest, the
        // local queues of remote members last (a mirror's remote leg is a device of its own, the
        // handle's local queue, which the mirror does not hold).
        Receive<BlockLayer.AllDeviceNames>(_ =>
        {
            var held = new HashSet<string>(_devices.Values.SelectMany(e => e.Holds), StringComparer.Ordinal);
            var remote = new HashSet<string>(_devices.Values.SelectMany(e => e.Opened.Select(h => h.Name)), StringComparer.Ordinal);
            Sender.Tell(new BlockLayer.DeviceNames(
                [.. _devices.Keys.Where(n => !held.Contains(n) && !remote.Contains(n))],
                [.. _devices.Keys.Where(n => held.Contains(n) && !remote.Contains(n))],
                [.. _devices.Keys.Where(remote.Contains)]));
        });
        Receive<BlockLayer.Register>(HandleRegister);
        Receive<BlockLayer.CreateStacked>(HandleCreateStacked);
        Receive<BlockLayer.LoadTable>(HandleLoadTable);
        Receive<TableBuilt>(HandleTableBuilt);
        Receive<BlockLayer.ReplaceLeg>(HandleReplaceLeg);
        Receive<LegSwapped>(HandleLegSwapped);
        Receive<RequestQueueProtocol.Ready>(HandleReady);
        Receive<BlockLayer.Destroy>(HandleDestroy);
        Receive<BlockLayer.DestroyHandle>(handle =>
        {
            if (_devices.TryGetValue(handle.Name, out var entry) && ReferenceEquals(entry.Device, handle.Device))
            {
                HandleDestroy(new BlockLayer.Destroy(handle.Name));
            }
            else
            {
                Sender.Tell(new BlockLayer.NoSuchDevice(handle.Name));
            }
        });
        Receive<RequestQueueProtocol.Unregistered>(HandleUnregistered);
        Receive<BlockLayer.Io>(HandleIo);
        // A remote asker gets pages that fit one remoting message: a cluster of 1,650 devices made
        // a 148 KB reply, which the transport dropped (OversizedPayloadException in the node's log)
        // while `actorblk devices` waited 60 s and said the node did not answer.
        var maxRemoteData = RemoteSurface.MaxRemoteData(Context.System.Settings.Config);
        Receive<ListClusterDevices>(list =>
        {
            var devices = ClusterDevices.AsSeenFrom(_layer.ClusterDevices.Snapshot, _layer.ClusterDevices.IsEnabled ? UnreachableNodes() : []);
            var (page, more) = Sender is IActorRefScope { IsLocal: false } || list.After is { Length: > 0 }
                ? ListClusterDevices.Page(devices, list.After ?? string.Empty, Sender is IActorRefScope { IsLocal: false } ? maxRemoteData : long.MaxValue)
                : (devices, false);
            Sender.Tell(new ClusterDeviceList(page, _layer.ClusterDevices.IsEnabled, more));
        });
        Receive<RemoteSurface.AdminRefused>(refused =>
        {
            _log.Warning("Refused {Request} from {Sender}: {Reason}", refused.Request.GetType().Name, Sender.Path, refused.Reason);
            Sender.Tell(new RemoteSurface.NotAuthorized(refused.Request.ToString() ?? string.Empty, refused.Reason));
        });
        Receive<BlockLayer.ListDevices>(_ => Sender.Tell(new BlockLayer.DeviceList(_devices.Values.Where(e => e.Ready).OrderBy(e => e.Registered).Select(Summary).ToArray())));
        Receive<BlockLayer.GetDeviceInfo>(get =>
        {
            if (get.Name is { Length: > 0 and <= RemoteSurface.MaxDeviceName } && _devices.TryGetValue(get.Name, out var entry) && entry is { Ready: true, Actor: { } actor })
            {
                actor.Forward(RequestQueueProtocol.GetInfo.Instance);
            }
            else
            {
                Sender.Tell(new BlockLayer.NoSuchDevice(Echo(get.Name)));
            }
        });
        // BlockLayer.SetCpuOnlineAsync asks here, not the topology actor by path: this actor's
        // mailbox exists from the moment it is created, its child only once PreStart has run, so
        // a hotplug event sent first thing after start went to dead letters (a spec caught it).
        Receive<CpuTopologyProtocol.CpuOffline>(m => _topology.Forward(m));
        Receive<CpuTopologyProtocol.CpuOnline>(m => _topology.Forward(m));
        Receive<Terminated>(HandleTerminated);
    }

    public static Props Props(BlockLayer layer) => Akka.Actor.Props.Create(() => new BlockLayerActor(layer));

    protected override void PreStart()
    {
        _topology = Context.ActorOf(
            CpuTopologyProtocol.Props(_layer.Topology, _layer.Settings.WatchedOnlineFile, _layer.Settings.WatchInterval, _layer.PublishTopology, _layer.Stopping), "cpu-topology");
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
        if (RefusedWhileStopping(create.Options.Name))
        {
            create.Driver?.Dispose();
            return;
        }

        if (Build(create.Options, create.Driver) is { } entry)
        {
            entry.Creator = Sender;
            StartActor(entry);
        }
    }

    // Allocation only: driver, tag set and queue exist; no actor, no dispatch thread, no sysfs.
    private void HandleAllocate(BlockLayer.Allocate allocate)
    {
        if (RefusedWhileStopping(allocate.Options.Name))
        {
            allocate.Driver?.Dispose();
            return;
        }

        if (Build(allocate.Options, allocate.Driver) is { } entry)
        {
            Sender.Tell(new BlockLayer.Created(entry.Device));
        }
    }

    private void HandleRegister(BlockLayer.Register register)
    {
        if (RefusedWhileStopping(register.Name))
        {
            return;
        }

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
    // The nodes this node's failure detector holds unreachable, as host:port.
    private IReadOnlyCollection<string> UnreachableNodes() =>
        [.. Akka.Cluster.Cluster.Get(Context.System).State.Unreachable.Select(m => DeviceRegistryActor.NodeName(m.Address))];

    // Once the node has begun to stop nothing new is made: a device made after the shutdown listed
    // the devices it tears down would outlive it (its callers' I/O never failed, its file locked
    // until the process exits).
    private bool RefusedWhileStopping(string name)
    {
        if (!_layer.Stopping.IsCancellationRequested)
        {
            return false;
        }

        Sender.Tell(new Status.Failure(new BlockLayerStoppingException(name, _layer.Stopping)));
        return true;
    }

    private Entry? Build(DeviceOptions options, IBlockDriver? driver)
    {
        if (_devices.ContainsKey(options.Name))
        {
            driver?.Dispose();
            Sender.Tell(new Status.Failure(new DeviceOptionsException(options.Name, "name", "a device with this name already exists.")));
            return null;
        }

        BlockDevice device;
        TagSet set;
        var addedSharedSet = false;
        try
        {
            if (driver is null)
            {
                options.Validate();
                var fitted = DeviceBuilder.FitConnections(options, _layer.CurrentTopology);
                if (fitted.Connections != options.Connections)
                {
                    // One connection per hardware queue, and no fallback to another when one dies:
                    // a connection past the hardware queues would be opened and never carry I/O.
                    _log.Warning("{Device}: connections {Asked} reduced to {Used}: one connection per hardware queue, and hardware queues are capped at the possible CPUs", options.Name, options.Connections, fitted.Connections);
                    options = fitted;
                }

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
                // The topology the last hotplug event left, not the one at start: a device made
                // while CPUs are offline is mapped over the online ones (an outside audit found its
                // queues mapped as at boot, active with only offline CPUs, until the next event).
                set = DeviceBuilder.CreateTagSet(options, driver, _layer.CurrentTopology);
                if (options.SharedTags)
                {
                    _sharedTagSets[options.TagSetName] = new SharedTagSet(set);
                    addedSharedSet = true;
                }
            }

            if (set.DepthWasClamped)
            {
                _log.Info("{Device}: hw_queue_depth {Requested} reduced to {Depth} (BLK_MQ_MAX_DEPTH)", options.Name, set.RequestedDepth, set.QueueDepth);
            }

            // Two-phase initialisation (§10): the generic queue first, then the multi-queue parts.
            var queue = RequestQueue.Allocate(options.Name, set.Map.Topology, driver.Limits, _layer.Clock);
            queue.InitializeMq(set, driver, options.ToQueueOptions());
            DeviceBuilder.ApplyLimits(options, queue);
            var name = options.Name;
            device = new BlockDevice(queue, self => _layer.DisposeHandleAsync(name, self));
        }
#pragma warning disable CA1031 // Whatever building one device throws fails that creation, never the guardian and with it the node.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            driver?.Dispose();
            if (addedSharedSet)
            {
                // Made for this device alone: the next device of that set name starts afresh.
                _sharedTagSets.Remove(options.TagSetName);
            }

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
            shared.Actor ??= Context.ActorOf(TagSetProtocol.Props(shared.Set), $"shared-{options.TagSetName}-{++_incarnation}");
            entry.TagSetActor = shared.Actor;
        }
        else
        {
            entry.TagSetActor = Context.ActorOf(TagSetProtocol.Props(entry.TagSet!), $"tags-{options.Name}-{++_incarnation}");
        }

        _layer.Track(entry.Device, options.Dispatch);
        entry.Actor = Context.ActorOf(RequestQueueProtocol.Props(entry.Device, entry.TagSetActor, _topology, _layer, options), $"dev-{options.Name}-{++_incarnation}");
        Context.Watch(entry.Actor);
    }

    // dm create: a placeholder queue under the name, neither bio-based nor multi-queue yet.
    private void HandleCreateStacked(BlockLayer.CreateStacked create)
    {
        if (!DeviceOptions.IsDeviceName(create.Name))
        {
            // The name becomes an actor name and a path in the attribute tree: "a/b" failed the
            // guardian (an illegal actor name) and with it the whole node.
            Sender.Tell(new Status.Failure(new DeviceOptionsException(create.Name ?? string.Empty, "name", $"'{create.Name}' is not a device name (letters, digits, '-', '_', '.'; at most 32 characters; not . or ..).")));
            return;
        }

        if (RefusedWhileStopping(create.Name))
        {
            return;
        }

        if (_devices.ContainsKey(create.Name))
        {
            Sender.Tell(new Status.Failure(new DeviceOptionsException(create.Name, "name", "a device with this name already exists.")));
            return;
        }

        try
        {
            var queue = RequestQueue.Allocate(create.Name, _layer.CurrentTopology, clock: _layer.Clock);
            var name = create.Name;
            var device = new BlockDevice(queue, self => _layer.DisposeHandleAsync(name, self));
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
        if (RefusedWhileStopping(load.Name))
        {
            CloseMembers(load.Opened.Values);
            return;
        }

        if (!_devices.TryGetValue(load.Name, out var entry))
        {
            CloseMembers(load.Opened.Values);
            Sender.Tell(new BlockLayer.NoSuchDevice(load.Name));
            return;
        }

        var queue = entry.Device.Queue;
        if (queue.Kind == QueueKind.MultiQueue || entry.Destroyers.Count > 0)
        {
            CloseMembers(load.Opened.Values);
            Sender.Tell(new Status.Failure(new InvalidOperationException($"Device {load.Name} is {(entry.Destroyers.Count > 0 ? "being removed" : "not a stacked device")}.")));
            return;
        }

        // A mirror's legs carry its state: a second assembly over live legs would fork it.
        if (entry.Assembling || (queue.Kind == QueueKind.BioBased && (load.Table is MirrorTable || queue.BioDriver is MirrorTarget)))
        {
            CloseMembers(load.Opened.Values);
            Sender.Tell(new Status.Failure(new DeviceOptionsException(load.Name, "table", entry.Assembling
                ? "a table is being loaded already."
                : "a mirror's table cannot be replaced, nor another table by a mirror: remove the device and create it again.")));
            return;
        }

        // A member named twice, or by two names of one device (x and x@node for this node's x, or
        // a plain name and name@node for another node's), is refused as md refuses a device claimed
        // twice (bd_claim: EBUSY): two extents, stripes or legs over one device's data would alias
        // it, a write to one overwriting the other (a mirror's two legs would be one copy).
        var keys = ClaimKeys(load);
        if (Aliased(load.Table, keys) is { } why)
        {
            CloseMembers(load.Opened.Values);
            Sender.Tell(new Status.Failure(new DeviceOptionsException(load.Name, "table", why)));
            return;
        }

        // md claims its legs exclusively (bd_claim with the array as holder): a device that a mirror
        // is built on is no other stacked device's member, and a mirror takes no device another
        // stacked device is built on. Linear and striped tables may share members, as dm's do.
        // Members are compared by what they resolve to: a device name here, name@node for another node's.
        var claimed = _devices.Values
            .Where(e => e != entry && (load.Table is MirrorTable || e.ClaimsExclusively))
            .SelectMany(e => e.Claims.Select(c => (Member: c, Holder: e.Options.Name)))
            .FirstOrDefault(c => keys.Contains(c.Member, StringComparer.Ordinal));
        if (claimed.Member is not null)
        {
            CloseMembers(load.Opened.Values);
            Sender.Tell(new Status.Failure(new DeviceOptionsException(load.Name, "members", $"'{claimed.Member}' is claimed by {claimed.Holder}: a mirror's legs are its own.")));
            return;
        }

        Task<StackTarget> building;
        try
        {
            var members = load.Table.MemberNames.Select(m => MemberOf(load, m)).ToArray();
            building = load.Table.BuildAsync(load.Name, members);
        }
        catch (Exception ex) when (ex is ArgumentException or KeyNotFoundException or InvalidOperationException)
        {
            CloseMembers(load.Opened.Values);
            Sender.Tell(new Status.Failure(new DeviceOptionsException(load.Name, "table", ex.Message)));
            return;
        }

        if (building.IsCompleted)
        {
            InstallTable(entry, load, building, Sender);
            return;
        }

        // A mirror reads its legs' metadata first; the legs are held from now on.
        entry.Assembling = true;
        entry.Holds = [.. load.Table.MemberNames.Where(m => !load.Opened.ContainsKey(m))];
        entry.Claims = keys;
        var sender = Sender;
        building.ContinueWith(t => new TableBuilt(load, t, sender), TaskScheduler.Default).PipeTo(Self);
    }

    private void HandleTableBuilt(TableBuilt built)
    {
        if (_devices.TryGetValue(built.Load.Name, out var entry) && entry.Assembling)
        {
            entry.Assembling = false;
            InstallTable(entry, built.Load, built.Building, built.ReplyTo);
            return;
        }

        // The placeholder was removed meanwhile.
        if (built.Building.IsCompletedSuccessfully)
        {
            built.Building.Result.Dispose();
        }

        CloseMembers(built.Load.Opened.Values);

        built.ReplyTo.Tell(new BlockLayer.NoSuchDevice(built.Load.Name));
    }

    private void InstallTable(Entry entry, BlockLayer.LoadTable load, Task<StackTarget> building, IActorRef replyTo)
    {
        var queue = entry.Device.Queue;
        StackTarget target;
        try
        {
            target = building.GetAwaiter().GetResult();
        }
        catch (MirrorAssemblyException ex)
        {
            Unclaim(entry);
            CloseMembers(load.Opened.Values);
            replyTo.Tell(new Status.Failure(ex));
            return;
        }
        catch (Exception ex) when (ex is ArgumentException or KeyNotFoundException or InvalidOperationException or BlockDeviceException)
        {
            Unclaim(entry);
            CloseMembers(load.Opened.Values);
            replyTo.Tell(new Status.Failure(new DeviceOptionsException(load.Name, "table", ex.Message)));
            return;
        }

        entry.Opened.AddRange(load.Opened.Values);
        entry.Claims = ClaimKeys(load);
        if (target is MirrorTarget mirror)
        {
            // md/new_dev replaces a leg through the block layer, as ReplaceMirrorLegAsync does.
            var layer = _layer;
            var name = load.Name;
            mirror.LegReplacer = (slot, member) => layer.ReplaceLegByAttributeAsync(name, slot, member);
        }

        if (queue.Kind == QueueKind.Placeholder)
        {
            queue.InitializeBioBased(target);
            entry.Holds = HoldsOf(target);
            var layer = _layer;
            entry.Actor = Context.ActorOf(StackedDevice.Props(entry.Device, () => layer.UnregisterDrainTimeout), $"dev-{load.Name}-{++_incarnation}");
            Context.Watch(entry.Actor);
            entry.Creator = replyTo;
            return;
        }

        entry.Actor!.Tell(new StackedDevice.SwapTarget(target), replyTo);
        entry.Holds = HoldsOf(target);
    }

    // md's --remove of a faulty leg and --add of a new device (README, "Mirrors"): the new member is
    // resolved, checked and claimed as a mirror table's leg would be, and claimed and held from
    // now on, so no table takes it and nobody destroys it while the mirror swaps it in (off the
    // actor: the swap waits for the mirror's I/O in flight). Then the old one is released.
    private void HandleReplaceLeg(BlockLayer.ReplaceLeg replace)
    {
        var opened = replace.Opened is { } handle ? new[] { handle } : [];
        if (RefusedWhileStopping(replace.Name))
        {
            CloseMembers(opened);
            return;
        }

        if (!_devices.TryGetValue(replace.Name, out var entry))
        {
            CloseMembers(opened);
            Sender.Tell(new BlockLayer.NoSuchDevice(replace.Name));
            return;
        }

        void Refuse(Exception ex)
        {
            CloseMembers(opened);
            Sender.Tell(new Status.Failure(ex));
        }

        if (entry.Device.Queue.BioDriver is not MirrorTarget mirror || entry.Destroyers.Count > 0 || entry.Assembling || entry.Replacing)
        {
            Refuse(new InvalidOperationException($"Device {replace.Name} is {(entry.Destroyers.Count > 0 ? "being removed" : entry.Assembling ? "being assembled" : entry.Replacing ? "replacing a leg already" : "not a mirror")}."));
            return;
        }

        if (replace.Slot < 0 || replace.Slot >= mirror.Legs.Count)
        {
            Refuse(new InvalidOperationException($"{replace.Name} has no slot {replace.Slot}: its legs are slots 0 to {mirror.Legs.Count - 1}."));
            return;
        }

        var load = new BlockLayer.LoadTable(replace.Name, StackTable.Linear(replace.Member))
        {
            Opened = replace.Opened is { } h ? new Dictionary<string, ClusterBlockDevice> { [replace.Member] = h } : new Dictionary<string, ClusterBlockDevice>(),
        };
        IBlockDevice device;
        try
        {
            device = MemberOf(load, replace.Member);
        }
        catch (Exception ex) when (ex is ArgumentException or KeyNotFoundException)
        {
            Refuse(new DeviceOptionsException(replace.Name, "members", ex.Message));
            return;
        }

        // The mirror compares handles: a leg named another way (l0@host:port for this node's l0,
        // or a second handle of another node's device) is another object, and was taken into a
        // second slot, the one device then counting as two copies. Compared by the device opened.
        var identity = LegIdentity(device);
        for (var i = 0; i < mirror.Legs.Count; i++)
        {
            if (LegIdentity(mirror.Legs[i]) == identity)
            {
                Refuse(new InvalidOperationException(i == replace.Slot
                    ? $"{replace.Name}: {replace.Member} is the faulty leg of slot {i} itself: re-add it instead."
                    : $"{replace.Name}: {replace.Member} is leg {i} of this mirror already ({mirror.Legs[i].Name})."));
                return;
            }
        }

        // As for a mirror table: no device another stacked device is built on.
        var key = ClaimKeys(load)[0];
        var claimed = _devices.Values.Where(e => e != entry).SelectMany(e => e.Claims.Select(c => (Member: c, Holder: e.Options.Name)))
            .FirstOrDefault(c => c.Member == key);
        if (claimed.Member is not null)
        {
            // The inner DeviceBusyException tells md/new_dev to answer EBUSY, as md's claim of a
            // device another holder has (bd_prepare_to_claim) fails.
            Refuse(new DeviceOptionsException(replace.Name, "members", $"'{claimed.Member}' is claimed by {claimed.Holder}: a mirror's legs are its own.", new DeviceBusyException(claimed.Member, claimed.Holder)));
            return;
        }

        var legs = mirror.Legs.Count;
        entry.Replacing = true;
        entry.Claims = [.. entry.Claims.Take(legs), key];
        entry.Holds = [.. HoldsOf(mirror), .. device is ClusterBlockDevice { IsRemote: true } ? Array.Empty<string>() : [device.Name]];
        entry.Opened.AddRange(opened);
        entry.ReplaceReplyTo = Sender;
        // Off the guardian: with nothing in flight the swap's synchronous part (its checks, the
        // superblock writes it issues) would otherwise run on this actor's thread.
        Task.Run(() => mirror.ReplaceLegAsync(replace.Slot, device))
            .ContinueWith(t => new LegSwapped(entry, replace, device, key, t), TaskScheduler.Default)
            .PipeTo(Self);
    }

    private void HandleLegSwapped(LegSwapped swapped)
    {
        var (entry, replace, device, key, swap) = swapped;
        entry.Replacing = false;
        var replyTo = entry.ReplaceReplyTo ?? ActorRefs.Nobody;
        entry.ReplaceReplyTo = null;
        var live = _devices.TryGetValue(replace.Name, out var now) && ReferenceEquals(now, entry) && entry.Device.Queue.BioDriver is MirrorTarget;
        var mirror = entry.Device.Queue.BioDriver as MirrorTarget;
        var legs = mirror?.Legs.Count ?? 0;
        if (!swap.IsCompletedSuccessfully)
        {
            // Refused (or the mirror stopped meanwhile): the new member is released again. A
            // mirror removed meanwhile closed its handles, this one with them.
            if (live)
            {
                entry.Claims = [.. entry.Claims.Take(legs)];
                entry.Holds = HoldsOf(mirror!);
                if (device is ClusterBlockDevice handle && entry.Opened.Remove(handle))
                {
                    CloseMembers([handle]);
                }
            }

            var error = swap.Exception?.InnerException ?? new InvalidOperationException($"Replacing leg {replace.Slot} of {replace.Name} was cancelled.");
            replyTo.Tell(new Status.Failure(error));
            return;
        }

        var old = swap.Result;
        var replaced = new BlockLayer.LegReplaced(replace.Name, replace.Slot, old.Name);
        var closing = Task.CompletedTask;
        if (live)
        {
            if (old is ClusterBlockDevice oldHandle && entry.Opened.Remove(oldHandle))
            {
                closing = CloseMembers([oldHandle]);
            }

            var claims = entry.Claims.Take(legs).ToArray();
            claims[replace.Slot] = key;
            entry.Claims = claims;
            entry.Holds = HoldsOf(mirror!);

            // The md/dev-<leg>/ directory is named after the leg: the tree is built again.
            var queue = entry.Device.Queue;
            if (queue.IsRegistered && !queue.IsDying)
            {
                queue.Attributes.Publish();
            }

            _log.Info("{0}: leg {1} (slot {2}) replaced by {3}; it is copied whole from the legs in sync (md/dev-{3}/state: spare until then)", replace.Name, replaced.Old, replace.Slot, device.Name);
        }

        // The old remote handle is closed before the reply, as a destroyed device's members are:
        // its local queue and NBD connections are gone when ReplaceMirrorLegAsync returns.
        closing.ContinueWith(_ => replyTo.Tell(replaced), TaskScheduler.Default);
    }

    // A table that failed to build leaves a placeholder holding and claiming nothing, and a
    // device with a table as it was.
    private static void Unclaim(Entry entry)
    {
        if (entry.Device.Queue.Kind == QueueKind.Placeholder)
        {
            entry.Holds = [];
            entry.Claims = [];
        }
    }

    // The local devices a stacked device is built on. A remote member's local queue is not held:
    // it belongs to the handle, which replaces it when the owner comes back.
    // The device a leg opens: another node's by its registry id, this node's by its name (also
    // when opened as name@host:port, whose handle wraps this node's device).
    private static string LegIdentity(IBlockDevice leg) => leg is ClusterBlockDevice { IsRemote: true } handle ? handle.Device.Id : leg.Name;

    private static string[] HoldsOf(StackTarget target) =>
        [.. target.Members.Where(m => m is not ClusterBlockDevice { IsRemote: true }).Select(m => m.Name)];

    // Members as they resolve: a device name here, name@node for another node's. A member named
    // name@node for a device of this node opens a handle over the local device, and its key is
    // that device's name: keyed name@node, a mirror could claim a device a linear device is built
    // on (a review). A member named by this node's local queue of another node's device (the
    // queue a handle of name@node connected) is that device too: keyed by its queue's name, a
    // table over it and name@node passed as two devices, and so did a mirror's exclusive claim.
    private string[] ClaimKeys(BlockLayer.LoadTable load) =>
        [.. load.Table.MemberNames.Select(m => load.Opened.TryGetValue(m, out var h) ? LegIdentity(h) : _layer.ImportedId(m) ?? m)];

    // Why the table names one device twice, with data that would alias, or null. Members are
    // compared by what they resolve to (ClaimKeys). Extents of a linear table over one device that
    // do not overlap are dm's usual segments (an LV's on one PV) and are let be; whole devices (as
    // StackTable.Linear and the configuration make them) always overlap.
    private static string? Aliased(StackTable table, string[] keys)
    {
        var names = table.MemberNames;
        for (var j = 1; j < keys.Length; j++)
        {
            for (var i = 0; i < j; i++)
            {
                if (keys[i] != keys[j] || (table is LinearTable linear && !Overlap(linear.Extents[i], linear.Extents[j])))
                {
                    continue;
                }

                var member = names[i] == names[j] ? $"member '{names[i]}' is listed twice" : $"members '{names[i]}' and '{names[j]}' are the same device ({keys[i]})";
                return table switch
                {
                    MirrorTable => $"{member}: a mirror's legs must be distinct devices (the two legs would be one copy).",
                    LinearTable => $"{member}: its extents would overlap on it, and a write to one would overwrite the other.",
                    _ => $"{member}: its stripes would share the device's data, and a write to one would overwrite the other.",
                };
            }
        }

        return null;

        // A null length runs to the end of the device (a bad geometry is the target's to refuse).
        static bool Overlap(LinearTable.Extent a, LinearTable.Extent b) => Math.Max(a.Offset, b.Offset) < Int128.Min(End(a), End(b));
        static Int128 End(LinearTable.Extent e) => e.Length is { } length ? (Int128)e.Offset + length : Int128.MaxValue;
    }

    // Closes the handles of remote members (each close destroys the local queue when it is the
    // last handle of that device); errors are logged, never thrown into the guardian.
    private Task CloseMembers(IEnumerable<ClusterBlockDevice> handles)
    {
        var list = handles.ToArray();
        if (list.Length == 0)
        {
            return Task.CompletedTask;
        }

        var log = _log;
        return Task.Run(async () =>
        {
            foreach (var handle in list)
            {
                try
                {
                    await handle.CloseAsync().ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    log.Warning("Closing member {0} failed: {1}", handle, ex.Message);
                }
            }
        });
    }

    private IBlockDevice MemberOf(BlockLayer.LoadTable load, string member)
    {
        var stacked = load.Name;
        if (member == stacked)
        {
            throw new ArgumentException($"{stacked} cannot be a member of itself.");
        }

        if (Holds(member, stacked))
        {
            // cA over cB over cA: the first I/O would recurse through the two tables until the
            // stack overflows and the process dies (an outside audit did it).
            throw new ArgumentException($"{member} is stacked over {stacked} (directly or through other devices): the table would make a cycle.");
        }

        if (load.Opened.TryGetValue(member, out var opened))
        {
            return opened;
        }

        return _devices.TryGetValue(member, out var m) && m.Ready && m.Destroyers.Count == 0
            ? m.Device
            : throw new KeyNotFoundException($"member device '{member}' does not exist or is not registered.");
    }

    // True when device `from` holds `target` as a member, directly or through stacked members.
    private bool Holds(string from, string target)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var next = new Stack<string>([from]);
        while (next.TryPop(out var name))
        {
            if (!seen.Add(name) || !_devices.TryGetValue(name, out var entry))
            {
                continue;
            }

            foreach (var held in entry.Holds)
            {
                if (held == target)
                {
                    return true;
                }

                next.Push(held);
            }
        }

        return false;
    }

    // A name in a refusal, cut to the longest a device may have: a peer's 100 KB name is not echoed back whole.
    private static string Echo(string? name) =>
        name is null ? string.Empty : name.Length <= RemoteSurface.MaxDeviceName ? name : name[..RemoteSurface.MaxDeviceName] + "...";

    private void HandleReady(RequestQueueProtocol.Ready ready)
    {
        if (!_devices.TryGetValue(ready.Name, out var entry))
        {
            return;
        }

        entry.Ready = true;
        if (entry.Registered == 0)
        {
            // Once per device: a second Ready (an actor restarted) keeps its place.
            entry.Registered = ++_registrations;
        }

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
            Sender.Tell(new BlockLayer.NoSuchDevice(Echo(destroy.Name)));
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
            entry.Actor.Tell(RequestQueueProtocol.Unregister.Instance);
        }
    }

    private void HandleUnregistered(RequestQueueProtocol.Unregistered done)
    {
        if (!_devices.Remove(done.Name, out var entry))
        {
            return;
        }

        Context.Unwatch(entry.Actor!);
        _layer.Forget(done.Name);
        ReleaseTagSet(entry);
        // Remote members are closed before the destroy is answered: their local queues are gone then.
        var destroyers = entry.Destroyers.ToArray();
        var destroyed = new BlockLayer.Destroyed(done.Name, done.FailedRequests);
        CloseMembers(entry.Opened).ContinueWith(_ =>
        {
            foreach (var destroyer in destroyers)
            {
                destroyer.Tell(destroyed);
            }
        }, TaskScheduler.Default);
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
        if (!entry.Ready)
        {
            DisposeFailedDriver(entry);
        }

        _layer.Forget(entry.Options.Name);
        ReleaseTagSet(entry);
        CloseMembers(entry.Opened);
        entry.Creator?.Tell(new Status.Failure(new InvalidOperationException($"Device {entry.Options.Name} failed while it was being registered; see the log.")));
        foreach (var destroyer in entry.Destroyers)
        {
            destroyer.Tell(new BlockLayer.Destroyed(entry.Options.Name, 0));
        }
    }

    // A device that failed before it served (a driver's InitHardwareContext that threw as the
    // queue started, with EagerHardwareContexts): no teardown will run for it, so its driver,
    // which the layer owns from the create on, is disposed here. An outside driver audit found it
    // left undisposed, its connections or threads with it.
    private void DisposeFailedDriver(Entry entry)
    {
        if (entry.Device.Queue.Kind != QueueKind.MultiQueue)
        {
            return;
        }

        try
        {
            entry.Device.Queue.Driver.Dispose();
        }
        catch (Exception ex)
        {
            _log.Warning(ex, "Disposing the driver of {Device}, which failed while it was being registered, failed", entry.Options.Name);
        }
    }

    private void HandleIo(BlockLayer.Io io)
    {
        if (io.Device is { Length: > 0 and <= RemoteSurface.MaxDeviceName } && _devices.TryGetValue(io.Device, out var entry) && entry is { Ready: true, Actor: { } actor })
        {
            actor.Forward(new RequestQueueProtocol.Io(io.Id, io.Op, io.Offset, io.Length, io.Data, io.Flags, io.Cpu));
        }
        else
        {
            Sender.Tell(new BlockLayer.NoSuchDevice(Echo(io.Device), io.Id));
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

    private sealed class SharedTagSet(TagSet set)
    {
        public TagSet Set { get; } = set;

        // Created when the first queue of the set registers.
        public IActorRef? Actor { get; set; }
    }

    private sealed class Entry(BlockDevice device, TagSet? tagSet, DeviceOptions options)
    {
        public BlockDevice Device { get; } = device;

        public TagSet? TagSet { get; } = tagSet;

        public DeviceOptions Options { get; } = options;

        // Null until the device registers.
        public IActorRef? Actor { get; set; }

        public IActorRef? TagSetActor { get; set; }

        public IActorRef? Creator { get; set; }

        public bool Ready { get; set; }

        // The device's place in the registration order (set when it becomes ready).
        public long Registered { get; set; }

        public List<IActorRef> Destroyers { get; } = [];

        // Devices this stacked device is built on: they cannot be destroyed while it lives.
        public string[] Holds { get; set; } = [];

        // Handles of members on other nodes, closed when the device goes.
        public List<ClusterBlockDevice> Opened { get; } = [];

        // Every member (a device name here, name@node for another node's) and whether they are
        // claimed exclusively (a mirror's legs).
        public string[] Claims { get; set; } = [];

        public bool ClaimsExclusively => Assembling || Device.Queue.BioDriver is MirrorTarget;

        // A table is being built (a mirror reading its legs' metadata).
        public bool Assembling { get; set; }

        // A mirror's leg is being replaced (ReplaceLeg), and who asked.
        public bool Replacing { get; set; }

        public IActorRef? ReplaceReplyTo { get; set; }
    }

    // A mirror's leg swap has ended (or was refused), back to settle the claims, holds and handles.
    private sealed record LegSwapped(Entry Entry, BlockLayer.ReplaceLeg Replace, IBlockDevice Device, string Key, Task<IBlockDevice> Swap);

    // A table built off the actor (a mirror's assembly), back to install it.
    private sealed record TableBuilt(BlockLayer.LoadTable Load, Task<StackTarget> Building, IActorRef ReplyTo);
}
