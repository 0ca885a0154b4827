r"""Launch the distilvpr mapping node (camera + LiDAR + odometry → place map with teacher and student).

    ros2 launch distilvpr_ros mapping.launch.py map_path:=/data/maps/town \
        teacher_checkpoint:=/models/teacher student_checkpoint:=/models/student use_sim_time:=true

Parameters come from ``config/mapping.yaml`` first, then the launch arguments (later entries win).
String arguments are passed as strings (``ParameterValue(..., value_type=str)``), so an empty path
stays "" instead of becoming YAML null. Input topics are remappable with the ``*_topic`` arguments;
``loop_closure`` can go to LIO-SAM's ``lio_loop/loop_closure_detection`` with ``loop_closure_topic``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = [
    ("namespace", "", "namespace of the node and its topics"),
    ("map_path", "map", "map folder to write (resumed when it exists and map.resume is true)"),
    ("teacher_checkpoint", "", "teacher checkpoint folder"),
    ("student_checkpoint", "", "camera-student checkpoint folder"),
    ("use_sim_time", "false", "use /clock (bag replay with --clock)"),
    ("camera_topic", "camera/image_raw", "sensor_msgs/Image input"),
    ("lidar_topic", "lidar/points", "sensor_msgs/PointCloud2 input"),
    ("odom_topic", "odom", "nav_msgs/Odometry input"),
    ("loop_closure_topic", "loop_closure", "output loop closures [t_query, t_match]"),
]


def generate_launch_description():
    config = PathJoinSubstitution([FindPackageShare("distilvpr_ros"), "config", "mapping.yaml"])
    node = Node(
        package="distilvpr_ros",
        executable="mapping_node",
        name="distilvpr_mapping",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            config,
            {
                "map.path": ParameterValue(LaunchConfiguration("map_path"), value_type=str),
                "models.teacher_checkpoint": ParameterValue(LaunchConfiguration("teacher_checkpoint"), value_type=str),
                "models.student_checkpoint": ParameterValue(LaunchConfiguration("student_checkpoint"), value_type=str),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        remappings=[
            ("camera/image_raw", LaunchConfiguration("camera_topic")),
            ("camera/image_raw/compressed", [LaunchConfiguration("camera_topic"), "/compressed"]),
            ("lidar/points", LaunchConfiguration("lidar_topic")),
            ("odom", LaunchConfiguration("odom_topic")),
            ("loop_closure", LaunchConfiguration("loop_closure_topic")),
        ],
    )
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=desc) for name, default, desc in ARGUMENTS]
        + [node]
    )
