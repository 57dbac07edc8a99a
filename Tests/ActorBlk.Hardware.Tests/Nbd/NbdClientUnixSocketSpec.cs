using System.Buffers.Binary;
using System.Net.Sockets;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// Opening an <c>nbd+unix://</c> device whose socket path is not a listening socket: each open
/// fails with one line that names the path and says what is there, as a user meets it (a server
/// killed, a typo, a directory given, permissions).
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class NbdClientUnixSocketSpec : IDisposable
{
    private readonly TempDirectory _dir = new("nbd-unix-fault");

    public void Dispose() => _dir.Dispose();

    private static string OpenError(string socket)
    {
        var error = Assert.Throws<IOException>(() => new NbdClientDriver(new NbdClientOptions { Uri = NbdUri.Parse($"nbd+unix:///?socket={socket}") }, "unix0"));
        Assert.DoesNotContain('\n', error.Message);
        return error.Message;
    }

    private static string Expected(string socket, string why) => $"cannot connect to nbd+unix:///?socket={socket}: {why}";

    // connect(2) fails with ECONNREFUSED on a path that is no socket: "Connection refused" sent the
    // user looking for a server when the path was wrong (found by an audit of the socket path's faults).
    [Fact]
    public void A_regular_file_or_a_directory_at_the_socket_path_is_named_as_such()
    {
        var file = _dir.CreateFile("disk.img", 4096);
        Assert.Equal(Expected(file, $"'{file}' is a regular file, not a socket"), OpenError(file));
        var directory = _dir.File("run");
        Directory.CreateDirectory(directory);
        Assert.Equal(Expected(directory, $"'{directory}' is a directory, not a socket"), OpenError(directory));
    }

    // A server killed (SIGKILL) leaves its socket file behind; connect(2) is refused. The socket
    // is bound and moved away before its listener closes, so .NET does not unlink it.
    [Fact]
    public void A_stale_socket_nobody_listens_on_says_so()
    {
        var stale = _dir.File("stale.sock");
        using (var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            var bound = _dir.File("bound.sock");
            listener.Bind(new UnixDomainSocketEndPoint(bound));
            listener.Listen();
            File.Move(bound, stale);
        }

        Assert.True(File.Exists(stale));
        Assert.Equal(Expected(stale, $"nothing listens on the socket '{stale}' (Connection refused: its server is not running, and the socket file is one it left behind)"), OpenError(stale));
    }

    // statx's ENOTDIR and EACCES were both reported as "No such file or directory": the check only
    // asked whether the path existed. Root searches any directory, so EACCES is met as nobody.
    [Fact]
    public void A_path_through_a_file_or_an_unsearchable_directory_names_the_real_error()
    {
        var file = _dir.CreateFile("disk.img", 4096);
        var through = Path.Combine(file, "kit.sock");
        Assert.Equal(Expected(through, $"cannot reach the socket '{through}' (Not a directory)"), OpenError(through));

        var locked = _dir.File("locked");
        Directory.CreateDirectory(locked);
        var socket = Path.Combine(locked, "kit.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(socket));
        listener.Listen();
        File.SetUnixFileMode(_dir.Path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.OtherExecute);
        File.SetUnixFileMode(locked, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.OtherRead);
        var error = string.Empty;
        Unprivileged.Run(() => error = OpenError(socket));
        Assert.Equal(Expected(socket, $"cannot reach the socket '{socket}' (Permission denied: a directory on its path is not searchable by this user)"), error);

        // The directory searchable, the socket file not writable: connect's own EACCES.
        File.SetUnixFileMode(locked, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.OtherExecute);
        File.SetUnixFileMode(socket, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.OtherRead);
        Unprivileged.Run(() => error = OpenError(socket));
        Assert.Equal(Expected(socket, $"no permission to connect to the socket '{socket}' (Permission denied: the socket file needs write permission)"), error);
    }

    // A Unix socket's listener with its backlog full makes connect(2) fail at once with EAGAIN
    // (TCP leaves the SYN unanswered, and the client's kernel sends it again): the open failed at
    // once with "Resource temporarily unavailable". It is tried again until the connect timeout,
    // then names the socket and its full backlog.
    [Fact]
    public void A_socket_whose_backlog_stays_full_fails_at_the_connect_timeout_naming_the_full_backlog()
    {
        var path = _dir.File("busy.sock");
        using var listener = Listener(path);
        var queued = FillBacklog(path);
        try
        {
            var tries = 0;
            var options = new NbdClientOptions
            {
                Uri = NbdUri.Parse($"nbd+unix:///?socket={path}"),
                ConnectTimeout = TimeSpan.FromSeconds(2),
                BacklogFullHook = () => Interlocked.Increment(ref tries),
            };
            var error = Assert.Throws<IOException>(() => NbdClientConnection.Connect(options).Dispose());
            Assert.Equal(
                Expected(path, $"the socket '{path}' kept its backlog of pending connections full for 2 s (connect: Resource temporarily unavailable, tried again until the connect timeout): its server accepts no connections, or not as fast as they come"),
                error.Message);
            Assert.IsType<TimeoutException>(error.InnerException);
            // More than once: the retries back off from 10 ms to 200 ms, so a 2 s timeout leaves room
            // for several even on a machine that stalls the test for a second.
            Assert.True(tries > 1, $"the connect was tried {tries} time(s)");
        }
        finally
        {
            queued.ForEach(s => s.Dispose());
        }
    }

    [Fact]
    public async Task A_socket_whose_backlog_is_full_is_connected_once_its_server_accepts_again()
    {
        var path = _dir.File("busy.sock");
        using var listener = Listener(path);
        var queued = FillBacklog(path);
        var full = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var options = new NbdClientOptions
        {
            Uri = NbdUri.Parse($"nbd+unix:///?socket={path}"),
            ConnectTimeout = TimeSpan.FromSeconds(60),
            BacklogFullHook = () => full.TrySetResult(),
        };
        var opening = Task.Run(() => NbdClientConnection.Connect(options));

        // The client met the full backlog (on the old code its open failed at once instead).
        await Task.WhenAny(full.Task, opening).WaitAsync(TimeSpan.FromSeconds(60));
        if (opening.IsFaulted)
        {
            Assert.Fail($"the open failed instead of trying again: {opening.Exception!.InnerException!.Message}");
        }

        // The server accepts again: the connections queued before are taken (and closed), then
        // the client's, which this test serves as an NBD server would.
        foreach (var s in queued)
        {
            using var early = await listener.AcceptAsync().WaitAsync(TimeSpan.FromSeconds(60));
            s.Dispose();
        }

        using var server = await listener.AcceptAsync().WaitAsync(TimeSpan.FromSeconds(60));
        await using var stream = new NetworkStream(server);
        await ServeGoAsync(stream, size: 16 << 20);
        using var connection = await opening.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal((ulong)(16 << 20), connection.Size);
    }

    private static Socket Listener(string path)
    {
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(0); // room for one connection waiting to be accepted
        return listener;
    }

    // Connects (without accepting) until connect(2) fails with EAGAIN: the backlog is full.
    private static List<Socket> FillBacklog(string path)
    {
        var queued = new List<Socket>();
        while (true)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) { Blocking = false };
            try
            {
                socket.Connect(new UnixDomainSocketEndPoint(path));
                queued.Add(socket);
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.WouldBlock)
            {
                socket.Dispose();
                Assert.NotEmpty(queued);
                return queued;
            }
        }
    }

    // Fixed newstyle: the greeting, the client's flags, then NBD_OPT_GO answered with the export's
    // NBD_INFO_EXPORT and the acknowledgement.
    private static async Task ServeGoAsync(Stream stream, ulong size)
    {
        var greeting = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(greeting, NbdProtocol.InitMagic);
        BinaryPrimitives.WriteUInt64BigEndian(greeting.AsSpan(8), NbdProtocol.OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(greeting.AsSpan(16), (ushort)(NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes));
        await stream.WriteAsync(greeting);
        await stream.ReadExactlyAsync(new byte[4]);
        var header = new byte[16];
        await stream.ReadExactlyAsync(header);
        if ((NbdOption)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8)) == NbdOption.StructuredReply)
        {
            // A server without structured replies, which the client asks for before NBD_OPT_GO.
            var refusal = OptionReply(NbdReply.ErrUnsupported, []);
            BinaryPrimitives.WriteUInt32BigEndian(refusal.AsSpan(8), (uint)NbdOption.StructuredReply);
            await stream.WriteAsync(refusal);
            await stream.ReadExactlyAsync(header);
        }

        Assert.Equal(NbdOption.Go, (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8)));
        await stream.ReadExactlyAsync(new byte[BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12))]);
        await stream.WriteAsync(OptionReply(NbdReply.Info, FakeNbdSession.ExportInfo(FakeNbdExport.Default with { Size = size })));
        await stream.WriteAsync(OptionReply(NbdReply.Ack, []));
    }

    private static byte[] OptionReply(NbdReply type, byte[] data)
    {
        var reply = new byte[20 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(reply, NbdProtocol.ReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(8), (uint)NbdOption.Go);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(12), (uint)type);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(16), (uint)data.Length);
        data.CopyTo(reply, 20);
        return reply;
    }

    [Fact]
    public void An_abstract_socket_nobody_listens_on_says_so()
    {
        var name = $"actorblk-none-{Guid.NewGuid():N}";
        Assert.Equal($"cannot connect to nbd+unix:///?socket=%00{name}: nothing listens on the abstract socket '\\x00{name}' (Connection refused)", OpenError($"%00{name}"));
    }
}
